//! [`PgSource`]: the typed reads answered by the Postgres read models.
//!
//! Each read is one read-only transaction (repeatable read) that reads the component's checkpoint
//! and the rows it needs, through the very row loading the Postgres sink uses
//! ([`crate::sink::postgres::model::load`]) and back through the mapping of what Postgres cannot
//! hold, so it answers exactly what the log projection answers at that checkpoint. A read with
//! `min_position` waits (bounded) until the checkpoint has passed it, then answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use hybridstore_wal::{LogId, Position};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::watch;

use super::{reached, Read, ReadError, ReadResult, ReadSource};
use crate::ids::{BotId, Component, ComponentSet, MigrationState};
use crate::projection::{
    ConversationHead, DailyCounters, Keys, MessageView, ProfileDocument, Projection, UserView,
};
use crate::sink::postgres::model::{self, Rows};
use crate::sink::postgres::PgError;
use crate::sink::SinkStatus;

/// How often a read waiting for `min_position` looks at the checkpoint again when it has no
/// sink status to wait on (another process runs the sink).
const CHECKPOINT_POLL: Duration = Duration::from_millis(5);

/// The Postgres read models as a read source.
#[derive(Debug, Clone)]
pub struct PgSource {
    pool: PgPool,
    wait_max: Duration,
    sink: Option<watch::Receiver<SinkStatus>>,
    log: Option<LogId>,
}

impl PgSource {
    /// Reads from the database of `pool`; a read with `min_position` waits at most `wait_max`.
    pub fn new(pool: PgPool, wait_max: Duration) -> PgSource {
        PgSource {
            pool,
            wait_max,
            sink: None,
            log: None,
        }
    }

    /// The same source with reads waiting at most `wait_max` for `min_position`.
    #[must_use]
    pub fn waiting(mut self, wait_max: Duration) -> PgSource {
        self.wait_max = wait_max;
        self
    }

    /// How far behind `durable_end` the followed sink has committed `component`, when a sink in
    /// this process is followed and has loaded its checkpoints (`None`: not known here).
    pub fn lag(&self, component: Component, durable_end: Position) -> Option<u64> {
        let status = self.sink.as_ref()?.borrow();
        if !status.loaded {
            return None;
        }
        status
            .components
            .get(&component)
            .map(|c| c.lag(durable_end))
    }

    /// How long a read with `min_position` waits for the checkpoint.
    pub fn wait_max(&self) -> Duration {
        self.wait_max
    }

    /// Answers only while the read models follow the log `log` (positions of another log mean
    /// nothing here: a read of them fails instead of answering from another history).
    #[must_use]
    pub fn of_log(mut self, log: LogId) -> PgSource {
        self.log = Some(log);
        self
    }

    /// Waits for `min_position` on the status of the sink that writes the tables (in this
    /// process) instead of polling the checkpoints.
    #[must_use]
    pub fn following(mut self, sink: watch::Receiver<SinkStatus>) -> PgSource {
        self.sink = Some(sink);
        self
    }

    /// A read-only snapshot (repeatable read) in which `component`'s checkpoint has passed
    /// `min_position`, and that checkpoint.
    async fn snapshot_at(
        &self,
        component: Component,
        min_position: Option<Position>,
    ) -> Result<(Transaction<'static, Postgres>, Position), ReadError> {
        let started = Instant::now();
        let mut sink = self.sink.clone();
        loop {
            // One statement: the isolation with the BEGIN saves a round trip per read.
            let mut tx = self
                .pool
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await
                .map_err(|error| unavailable(query("begin", error)))?;
            let cursors = model::cursors(&mut tx, false).await.map_err(unavailable)?;
            if let (Some(log), Some(stored)) = (self.log, cursors.log) {
                if log != stored {
                    return Err(ReadError::Unavailable {
                        source_name: "postgres",
                        message: format!(
                            "the read models follow log {stored}, not this log ({log})"
                        ),
                    });
                }
            }
            let applied_end = cursors.get(component).next;
            if min_position.is_none_or(|min| reached(applied_end, min)) {
                return Ok((tx, applied_end));
            }
            drop(tx);
            let waited = started.elapsed();
            let Some(left) = self.wait_max.checked_sub(waited).filter(|l| !l.is_zero()) else {
                return Err(ReadError::NotCaughtUp {
                    source_name: "postgres",
                    min_position: min_position.unwrap_or_default(),
                    applied: applied_end,
                    waited,
                });
            };
            match &mut sink {
                Some(status) => {
                    let min = min_position.unwrap_or_default();
                    let waited = tokio::time::timeout(
                        left,
                        status.wait_for(|s| {
                            s.components
                                .get(&component)
                                .is_some_and(|c| reached(c.committed, min))
                                || s.stopped.is_some()
                        }),
                    )
                    .await
                    .map(|found| found.map(|s| s.stopped.is_some()));
                    // A stopped sink, or one whose handle is gone, will not say when the
                    // checkpoint moves: poll from now on.
                    if matches!(waited, Ok(Err(_)) | Ok(Ok(true))) {
                        sink = None;
                    }
                }
                None => tokio::time::sleep(left.min(CHECKPOINT_POLL)).await,
            }
        }
    }

    /// Where a subject was erased, if the `erasures` table says it was.
    ///
    /// # Errors
    /// [`ReadError::Unavailable`] when Postgres fails.
    pub async fn erasure(
        &self,
        bot: &BotId,
        kind: crate::ids::SubjectKind,
        id: i64,
    ) -> Result<Option<Position>, ReadError> {
        let found: Option<(i64,)> = sqlx::query_as(
            "SELECT position FROM erasures WHERE bot_id = $1 AND kind = $2 AND subject_id = $3",
        )
        .bind(bot.as_str())
        .bind(kind.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| unavailable(query("read erasures", error)))?;
        Ok(found.map(|(p,)| Position(u64::try_from(p).unwrap_or(0))))
    }

    /// Loads the entries of `keys` for `component` into a projection and reads it.
    async fn read_entries<T>(
        &self,
        component: Component,
        min_position: Option<Position>,
        keys: Keys,
        pick: impl FnOnce(&Projection) -> T,
    ) -> Result<Read<T>, ReadError> {
        let (mut tx, applied_end) = self.snapshot_at(component, min_position).await?;
        let mut projection = Projection::with_components(0, ComponentSet::of([component]));
        model::load(&mut tx, Rows::Of(&keys), &mut projection)
            .await
            .map_err(unavailable)?;
        tx.commit()
            .await
            .map_err(|error| unavailable(query("commit", error)))?;
        Ok(Read {
            value: pick(&projection),
            applied_end,
        })
    }
}

fn query(what: &'static str, error: sqlx::Error) -> PgError {
    PgError::Query { what, error }
}

fn unavailable(error: PgError) -> ReadError {
    ReadError::Unavailable {
        source_name: "postgres",
        message: error.to_string(),
    }
}

impl ReadSource for PgSource {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn user<'a>(
        &'a self,
        bot: &'a BotId,
        user_id: i64,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<UserView>> {
        let mut keys = Keys::default();
        keys.users.insert((bot.clone(), user_id));
        self.read_entries(Component::Users, min_position, keys, move |p| {
            p.user(bot, user_id).cloned()
        })
        .boxed()
    }

    fn profile<'a>(
        &'a self,
        bot: &'a BotId,
        chat_id: i64,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<Arc<ProfileDocument>>> {
        let mut keys = Keys::default();
        keys.profiles.insert((bot.clone(), chat_id));
        self.read_entries(Component::Profiles, min_position, keys, move |p| {
            p.profile_shared(bot, chat_id)
        })
        .boxed()
    }

    fn head<'a>(
        &'a self,
        bot: &'a BotId,
        chat_id: i64,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<ConversationHead>> {
        let mut keys = Keys::default();
        keys.conversations.insert((bot.clone(), chat_id));
        self.read_entries(Component::Conversations, min_position, keys, move |p| {
            p.conversation(bot, chat_id).map(|c| c.head)
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
        async move {
            let (mut tx, applied_end) = self
                .snapshot_at(Component::Conversations, min_position)
                .await?;
            let value = model::load_last_messages(&mut tx, bot, chat_id, limit)
                .await
                .map_err(unavailable)?;
            tx.commit()
                .await
                .map_err(|error| unavailable(query("commit", error)))?;
            Ok(Read { value, applied_end })
        }
        .boxed()
    }

    fn config_value<'a>(
        &'a self,
        bot: &'a BotId,
        scope: &'a str,
        key: &'a str,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<serde_json::Value>> {
        let mut keys = Keys::default();
        keys.config
            .insert((bot.clone(), scope.to_owned(), key.to_owned()));
        self.read_entries(Component::Configuration, min_position, keys, move |p| {
            p.config_value(bot, scope, key).cloned()
        })
        .boxed()
    }

    fn component_state<'a>(
        &'a self,
        bot: &'a BotId,
        component: Component,
        min_position: Option<Position>,
    ) -> ReadResult<'a, MigrationState> {
        let mut keys = Keys::default();
        keys.components.insert((bot.clone(), component));
        self.read_entries(Component::Configuration, min_position, keys, move |p| {
            p.component_state(bot, component)
        })
        .boxed()
    }

    fn daily<'a>(
        &'a self,
        bot: &'a BotId,
        day: i64,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<DailyCounters>> {
        let mut keys = Keys::default();
        keys.days.insert((bot.clone(), day));
        self.read_entries(Component::Analytics, min_position, keys, move |p| {
            p.daily_by_day(bot, day).map(DailyCounters::counts_only)
        })
        .boxed()
    }
}
