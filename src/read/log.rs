//! [`LogSource`]: the typed reads answered by the log projection in memory (the embedded
//! default; the fallback of every other source).

use std::sync::Arc;

use futures_util::FutureExt as _;
use hybridstore_wal::Position;

use super::{Read, ReadError, ReadResult, ReadSource};
use crate::ids::{BotId, Component, MigrationState, StreamId};
use crate::projection::{
    ConversationHead, DailyCounters, MessageView, ProfileDocument, Projection, UserView,
};
use crate::store::Store;

/// The log projection of a [`Store`] as a read source.
#[derive(Debug, Clone)]
pub struct LogSource {
    store: Store,
}

impl LogSource {
    /// The reads of `store`'s log projection.
    pub fn new(store: Store) -> LogSource {
        LogSource { store }
    }

    /// The store it reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where a subject was erased, if it was (as the projection stands now).
    ///
    /// # Errors
    /// When the projection cannot be read.
    pub async fn erasure(
        &self,
        bot: &BotId,
        kind: crate::ids::SubjectKind,
        id: i64,
    ) -> Result<Option<Position>, ReadError> {
        // Erased and nothing of them since: a subject that came back is not "erased".
        Ok(self
            .read(None, |p| match kind {
                crate::ids::SubjectKind::Chat => p.chat_erased(bot, id),
                crate::ids::SubjectKind::User => p.user_erased(bot, id),
            })
            .await?
            .value)
    }

    async fn read<T>(
        &self,
        min_position: Option<Position>,
        read: impl FnOnce(&Projection) -> T,
    ) -> Result<Read<T>, ReadError> {
        let (value, applied_end) = self
            .store
            .read_projection(min_position, |p| (read(p), p.applied_end()))
            .await?;
        Ok(Read { value, applied_end })
    }
}

impl ReadSource for LogSource {
    fn name(&self) -> &'static str {
        "log"
    }

    fn user<'a>(
        &'a self,
        bot: &'a BotId,
        user_id: i64,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<UserView>> {
        self.read(min_position, move |p| p.user(bot, user_id).cloned())
            .boxed()
    }

    fn profile<'a>(
        &'a self,
        bot: &'a BotId,
        chat_id: i64,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<Arc<ProfileDocument>>> {
        self.read(min_position, move |p| p.profile_shared(bot, chat_id))
            .boxed()
    }

    fn head<'a>(
        &'a self,
        bot: &'a BotId,
        chat_id: i64,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<ConversationHead>> {
        self.read(min_position, move |p| {
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
            let stream = StreamId::conversation(bot, chat_id);
            let (value, applied_end) = self
                .store
                .last_messages_at(&stream, limit, min_position)
                .await?;
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
        self.read(min_position, move |p| {
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
        self.read(min_position, move |p| p.component_state(bot, component))
            .boxed()
    }

    fn daily<'a>(
        &'a self,
        bot: &'a BotId,
        day: i64,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<DailyCounters>> {
        self.read(min_position, move |p| {
            p.daily_by_day(bot, day).map(DailyCounters::counts_only)
        })
        .boxed()
    }
}
