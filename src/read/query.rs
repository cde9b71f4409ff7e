//! [`Query`] and [`Answer`]: one typed read as a value (a shadow read outlives the call that
//! asked for it), the component and entry it reads, the streams that can change it, its cache
//! key, and asking any [`ReadSource`] for it.

use std::sync::Arc;

use hybridstore_wal::Position;
use serde::Serialize;

use super::cache::{CacheKey, CachedValue};
use super::{Read, ReadError, ReadSource};
use crate::ids::{BotId, Component, StreamId};
use crate::projection::{ConversationHead, DailyCounters, MessageView, ProfileDocument, UserView};

/// One typed read, owned (a shadow read outlives the call that asked for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// A user.
    User {
        /// The bot.
        bot: BotId,
        /// The user.
        user_id: i64,
    },
    /// A profile document.
    Profile {
        /// The bot.
        bot: BotId,
        /// The chat.
        chat_id: i64,
    },
    /// A conversation head.
    Head {
        /// The bot.
        bot: BotId,
        /// The chat.
        chat_id: i64,
    },
    /// The last messages of a chat.
    Messages {
        /// The bot.
        bot: BotId,
        /// The chat.
        chat_id: i64,
        /// How many, at most.
        limit: usize,
    },
    /// A configuration value.
    Config {
        /// The bot.
        bot: BotId,
        /// The scope.
        scope: String,
        /// The key.
        key: String,
    },
    /// A day's analytics.
    Daily {
        /// The bot.
        bot: BotId,
        /// Days since 1970-01-01.
        day: i64,
    },
}

/// The answer of a [`Query`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// Of [`Query::User`].
    User(Option<UserView>),
    /// Of [`Query::Profile`].
    Profile(Option<Arc<ProfileDocument>>),
    /// Of [`Query::Head`].
    Head(Option<ConversationHead>),
    /// Of [`Query::Messages`].
    Messages(Vec<MessageView>),
    /// Of [`Query::Config`].
    Config(Option<serde_json::Value>),
    /// Of [`Query::Daily`].
    Daily(Option<DailyCounters>),
}

impl Answer {
    pub(super) fn into_cached(self) -> CachedValue {
        match self {
            Answer::User(v) => CachedValue::User(v),
            Answer::Profile(v) => CachedValue::Profile(v),
            Answer::Head(v) => CachedValue::Head(v),
            Answer::Messages(v) => CachedValue::Messages(Arc::from(v)),
            Answer::Config(v) => CachedValue::Config(v),
            Answer::Daily(v) => CachedValue::Daily(v),
        }
    }

    pub(super) fn from_cached(value: CachedValue) -> Answer {
        match value {
            CachedValue::User(v) => Answer::User(v),
            CachedValue::Profile(v) => Answer::Profile(v),
            CachedValue::Head(v) => Answer::Head(v),
            CachedValue::Messages(v) => Answer::Messages(v.to_vec()),
            CachedValue::Config(v) => Answer::Config(v),
            CachedValue::Daily(v) => Answer::Daily(v),
        }
    }
}

impl Query {
    /// The bot it reads.
    pub fn bot(&self) -> &BotId {
        match self {
            Query::User { bot, .. }
            | Query::Profile { bot, .. }
            | Query::Head { bot, .. }
            | Query::Messages { bot, .. }
            | Query::Config { bot, .. }
            | Query::Daily { bot, .. } => bot,
        }
    }

    /// The component that answers it.
    pub fn component(&self) -> Component {
        match self {
            Query::User { .. } => Component::Users,
            Query::Profile { .. } => Component::Profiles,
            Query::Head { .. } | Query::Messages { .. } => Component::Conversations,
            Query::Config { .. } => Component::Configuration,
            Query::Daily { .. } => Component::Analytics,
        }
    }

    /// The entry it reads, as text: what sampling hashes (a conversation's head and messages are
    /// one entry, whatever the limit) and what a mismatch names.
    pub fn entry(&self) -> String {
        match self {
            Query::User { user_id, .. } => format!("user {user_id}"),
            Query::Profile { chat_id, .. } => format!("profile {chat_id}"),
            Query::Head { chat_id, .. } | Query::Messages { chat_id, .. } => {
                format!("conversation {chat_id}")
            }
            Query::Config { scope, key, .. } => format!("config {scope}/{key}"),
            Query::Daily { day, .. } => format!("day {day}"),
        }
    }

    /// The streams whose events alone can change the answer (a conversation's, and its user's:
    /// erasing the user clears the profile and the conversation), or `None` when events of any
    /// stream can (a day's analytics).
    pub(super) fn streams(&self) -> Option<Vec<StreamId>> {
        Some(match self {
            Query::User { bot, user_id } => vec![StreamId::user(bot, *user_id)],
            Query::Profile { bot, chat_id }
            | Query::Head { bot, chat_id }
            | Query::Messages { bot, chat_id, .. } => vec![
                StreamId::conversation(bot, *chat_id),
                StreamId::user(bot, *chat_id),
            ],
            Query::Config { bot, .. } => vec![StreamId::bot(bot)],
            Query::Daily { .. } => return None,
        })
    }

    pub(super) fn cache_key(&self, messages_cached: usize) -> Option<CacheKey> {
        Some(match self.clone() {
            Query::User { bot, user_id } => CacheKey::User(bot, user_id),
            Query::Profile { bot, chat_id } => CacheKey::Profile(bot, chat_id),
            Query::Head { bot, chat_id } => CacheKey::Head(bot, chat_id),
            Query::Messages {
                bot,
                chat_id,
                limit,
            } if limit <= messages_cached => CacheKey::Messages(bot, chat_id),
            Query::Messages { .. } => return None,
            Query::Config { bot, scope, key } => CacheKey::Config(bot, scope, key),
            Query::Daily { bot, day } => CacheKey::Daily(bot, day),
        })
    }

    /// Asks `source`.
    pub(super) async fn run(
        &self,
        source: &dyn ReadSource,
        min_position: Option<Position>,
    ) -> Result<Read<Answer>, ReadError> {
        fn wrap<T>(read: Read<T>, f: impl FnOnce(T) -> Answer) -> Read<Answer> {
            Read {
                value: f(read.value),
                applied_end: read.applied_end,
            }
        }
        Ok(match self {
            Query::User { bot, user_id } => wrap(
                source.user(bot, *user_id, min_position).await?,
                Answer::User,
            ),
            Query::Profile { bot, chat_id } => wrap(
                source.profile(bot, *chat_id, min_position).await?,
                Answer::Profile,
            ),
            Query::Head { bot, chat_id } => wrap(
                source.head(bot, *chat_id, min_position).await?,
                Answer::Head,
            ),
            Query::Messages {
                bot,
                chat_id,
                limit,
            } => wrap(
                source.messages(bot, *chat_id, *limit, min_position).await?,
                Answer::Messages,
            ),
            Query::Config { bot, scope, key } => wrap(
                source.config_value(bot, scope, key, min_position).await?,
                Answer::Config,
            ),
            Query::Daily { bot, day } => {
                wrap(source.daily(bot, *day, min_position).await?, Answer::Daily)
            }
        })
    }
}
