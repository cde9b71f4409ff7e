//! The log projection: in-memory read models rebuilt from the log at open and kept live by
//! following it. This is the embedded default's read path (design §4, "Components and their
//! reads") and the reference the Postgres projection is compared with.
//!
//! # Invariants
//! - `apply` is a pure function of the events in log order: a projection built live equals one
//!   rebuilt from scratch (`tests/store_property.rs` checks this).
//! - Memory stays bounded per conversation: only the last `tail_len` messages are kept; older ones
//!   are read from the log through the store's per-stream index.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The projection's maps: ahash, randomized and fast (keys come from clients, so no fixed hash).
type Map<K, V> = HashMap<K, V, ahash::RandomState>;

use hybridstore_wal::Position;

use crate::events::{Event, RecordedEvent};
use crate::ids::{
    BotId, Component, ComponentSet, MigrationState, StreamKind, SubjectKind, Timestamp,
};

mod analytics;
mod conversations;
pub mod keys;
mod profiles;
mod replay;
mod users;
mod views;

pub use keys::Keys;
pub use replay::{event_at, replay_log};
pub use views::{
    ConversationHead, ConversationView, DailyCounters, Direction, MessageView, ProfileDocument,
    UserView,
};

/// The in-memory read models.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    tail_len: usize,
    /// The components this projection maintains; events of others are skipped. Components are
    /// independent: no component's state depends on another's, so any subset projects the same
    /// as the full projection restricted to it (the Postgres projector relies on this).
    maintained: ComponentSet,
    applied_end: Position,
    users: Map<(BotId, i64), UserView>,
    /// Shared so a read hands out a reference count, not a deep copy; `apply` copies on write
    /// only while a reader still holds the old version.
    profiles: Map<(BotId, i64), Arc<ProfileDocument>>,
    conversations: Map<(BotId, i64), ConversationView>,
    config: Map<BotId, BTreeMap<(String, String), serde_json::Value>>,
    components: Map<BotId, BTreeMap<Component, MigrationState>>,
    analytics: Map<(BotId, i64), DailyCounters>,
    /// Erased subjects: the position of their (last) erasure. Kept by every projection that
    /// maintains users, profiles or conversations, so a read can say "erased", not "absent".
    erasures: Map<(BotId, SubjectKind, i64), Position>,
}

impl Projection {
    /// An empty projection keeping `tail_len` messages per conversation.
    pub fn new(tail_len: usize) -> Projection {
        Projection::with_components(tail_len, ComponentSet::ALL)
    }

    /// An empty projection of `components` only.
    pub fn with_components(tail_len: usize, components: ComponentSet) -> Projection {
        Projection {
            tail_len,
            maintained: components,
            applied_end: Position(0),
            users: Map::default(),
            profiles: Map::default(),
            conversations: Map::default(),
            config: Map::default(),
            components: Map::default(),
            analytics: Map::default(),
            erasures: Map::default(),
        }
    }

    /// The components this projection maintains.
    pub fn components(&self) -> ComponentSet {
        self.maintained
    }

    /// Position one past the last applied event.
    pub fn applied_end(&self) -> Position {
        self.applied_end
    }

    /// Marks positions below `end` applied (records that are not events of ours still advance it).
    pub fn advance_to(&mut self, end: Position) {
        self.applied_end = self.applied_end.max(end);
    }

    /// Applies one event. Events must come in log order.
    pub fn apply(&mut self, recorded: &RecordedEvent) {
        self.apply_with(recorded, None);
    }

    /// Applies one event it may take apart: a message's text moves into the conversation's tail
    /// instead of being copied (the rebuild and the projector's path).
    pub fn apply_owned(&mut self, mut recorded: RecordedEvent) {
        let message = MessageView::take_from_event(&mut recorded);
        self.apply_with(&recorded, message);
    }

    fn apply_with(&mut self, recorded: &RecordedEvent, message: Option<MessageView>) {
        debug_assert!(
            recorded.position >= self.applied_end,
            "events applied out of order"
        );
        self.applied_end = recorded.position.advance(1);
        let bot = recorded.bot_id.clone();
        let key = recorded.stream.key();
        let at = recorded.occurred_at;
        let components = self.maintained;
        match (&recorded.event, recorded.stream.kind(), key) {
            (event, StreamKind::User, Some(user_id)) => {
                self.apply_user(bot, user_id, recorded.position, at, event)
            }
            (Event::ChatErased(_), StreamKind::Conversation, Some(chat_id)) => {
                self.erase_chat(&(bot, chat_id), recorded.position);
            }
            (event, StreamKind::Conversation, Some(chat_id)) => {
                self.apply_conversation(recorded, message, bot, chat_id, event)
            }
            (Event::ConfigValueSet(e), StreamKind::Bot, _)
                if components.contains(Component::Configuration) =>
            {
                self.config
                    .entry(bot)
                    .or_default()
                    .insert((e.scope.clone(), e.key.clone()), e.value.value());
            }
            (Event::ConfigValueUnset(e), StreamKind::Bot, _)
                if components.contains(Component::Configuration) =>
            {
                if let Some(values) = self.config.get_mut(&bot) {
                    values.remove(&(e.scope.clone(), e.key.clone()));
                }
            }
            (Event::ComponentStateChanged(e), StreamKind::Bot, _)
                if components.contains(Component::Configuration) =>
            {
                self.components
                    .entry(bot)
                    .or_default()
                    .insert(e.component, e.to);
            }
            (Event::AnalyticsRecorded(e), StreamKind::Telemetry, _)
                if e.kind == "llm_call" && components.contains(Component::Analytics) =>
            {
                self.apply_llm_call(bot, at, e);
            }
            // The store refuses events on the wrong kind of stream, so nothing else reaches here
            // but events of components this projection does not maintain.
            _ => {}
        }
    }

    fn apply_conversation(
        &mut self,
        recorded: &RecordedEvent,
        message: Option<MessageView>,
        bot: BotId,
        chat_id: i64,
        event: &Event,
    ) {
        let key = (bot, chat_id);
        if self.maintained.contains(Component::Profiles) {
            self.apply_profile(recorded, &key, event);
        }
        if self.maintained.contains(Component::Analytics) {
            self.apply_message_counters(recorded, &key, event);
        }
        if self.maintained.contains(Component::Conversations) {
            self.apply_conversation_head(recorded, message, key, event);
        }
    }

    // derives anything.

    /// Where a subject was (last) erased, if it was.
    pub fn erasure(&self, bot: &BotId, kind: SubjectKind, id: i64) -> Option<Position> {
        self.erasures.get(&(bot.clone(), kind, id)).copied()
    }

    /// Every erasure mark: bot, kind, id, position.
    pub fn erasures_iter(&self) -> impl Iterator<Item = (&BotId, SubjectKind, i64, Position)> {
        self.erasures
            .iter()
            .map(|((bot, kind, id), position)| (bot, *kind, *id, *position))
    }

    /// Loads an erasure mark.
    pub fn insert_erasure(&mut self, bot: BotId, kind: SubjectKind, id: i64, position: Position) {
        self.erasures.insert((bot, kind, id), position);
    }

    /// Whether the chat was erased and nothing of it came since (no profile, no message, no
    /// follow-up): what a read of it reports as erased.
    pub fn chat_erased(&self, bot: &BotId, chat_id: i64) -> Option<Position> {
        let position = self.erasure(bot, SubjectKind::Chat, chat_id)?;
        let key = (bot.clone(), chat_id);
        let profile = self.profiles.contains_key(&key);
        let active = self.conversations.get(&key).is_some_and(|c| {
            c.head.messages_in + c.head.messages_out > 0 || !c.followups.is_empty()
        });
        (!profile && !active).then_some(position)
    }

    /// Whether the user was erased and has not registered again.
    pub fn user_erased(&self, bot: &BotId, user_id: i64) -> Option<Position> {
        let position = self.erasure(bot, SubjectKind::User, user_id)?;
        (!self.users.contains_key(&(bot.clone(), user_id))).then_some(position)
    }

    /// Erases a chat: its profile and its messages go (the conversation stays, cleared at
    /// `position`, so no read fetches the older messages from the log either), and the mark.
    fn erase_chat(&mut self, key: &(BotId, i64), position: Position) {
        if self.maintained.contains(Component::Profiles) {
            self.profiles.remove(key);
        }
        if self.maintained.contains(Component::Conversations) {
            let mut cleared = ConversationView::default();
            cleared.head.cleared_before = position;
            self.conversations.insert(key.clone(), cleared);
        }
        self.mark_erased(&key.0, SubjectKind::Chat, key.1, position);
    }

    /// Sets an erasure mark, in a projection of a component a subject's data is in.
    fn mark_erased(&mut self, bot: &BotId, kind: SubjectKind, id: i64, position: Position) {
        let set = self.maintained;
        if set.contains(Component::Users)
            || set.contains(Component::Profiles)
            || set.contains(Component::Conversations)
        {
            self.erasures.insert((bot.clone(), kind, id), position);
        }
    }

    /// Every user.
    pub fn users_iter(&self) -> impl Iterator<Item = (&BotId, &UserView)> {
        self.users.iter().map(|((bot, _), user)| (bot, user))
    }

    /// Every profile, with its chat.
    pub fn profiles_iter(&self) -> impl Iterator<Item = (&BotId, &ProfileDocument)> {
        self.profiles.iter().map(|((bot, _), p)| (bot, &**p))
    }

    /// Every conversation, with its chat.
    pub fn conversations_iter(&self) -> impl Iterator<Item = (&BotId, i64, &ConversationView)> {
        self.conversations
            .iter()
            .map(|((bot, chat), c)| (bot, *chat, c))
    }

    /// Every configuration value: bot, scope, key, value.
    pub fn config_iter(&self) -> impl Iterator<Item = (&BotId, &str, &str, &serde_json::Value)> {
        self.config.iter().flat_map(|(bot, values)| {
            values
                .iter()
                .map(move |((scope, key), value)| (bot, scope.as_str(), key.as_str(), value))
        })
    }

    /// Every component state that was ever set.
    pub fn component_states_iter(
        &self,
    ) -> impl Iterator<Item = (&BotId, Component, MigrationState)> {
        self.components.iter().flat_map(|(bot, states)| {
            states
                .iter()
                .map(move |(component, state)| (bot, *component, *state))
        })
    }

    /// Every day's counters: bot, day (days since 1970-01-01), counters.
    pub fn analytics_iter(&self) -> impl Iterator<Item = (&BotId, i64, &DailyCounters)> {
        self.analytics
            .iter()
            .map(|((bot, day), counters)| (bot, *day, counters))
    }

    /// The counters of a day (days since 1970-01-01).
    pub fn daily_by_day(&self, bot: &BotId, day: i64) -> Option<&DailyCounters> {
        self.analytics.get(&(bot.clone(), day))
    }

    /// Loads a user.
    pub fn insert_user(&mut self, bot: BotId, user: UserView) {
        self.users.insert((bot, user.user_id), user);
    }

    /// Loads a profile.
    pub fn insert_profile(&mut self, bot: BotId, profile: ProfileDocument) {
        self.profiles
            .insert((bot, profile.chat_id), Arc::new(profile));
    }

    /// Loads a conversation.
    pub fn insert_conversation(
        &mut self,
        bot: BotId,
        chat_id: i64,
        conversation: ConversationView,
    ) {
        self.conversations.insert((bot, chat_id), conversation);
    }

    /// The conversation of a chat, created empty if absent (for loading its parts).
    pub fn conversation_mut(&mut self, bot: BotId, chat_id: i64) -> &mut ConversationView {
        self.conversations.entry((bot, chat_id)).or_default()
    }

    /// Loads a configuration value.
    pub fn insert_config_value(
        &mut self,
        bot: BotId,
        scope: String,
        key: String,
        value: serde_json::Value,
    ) {
        self.config
            .entry(bot)
            .or_default()
            .insert((scope, key), value);
    }

    /// Loads a component state.
    pub fn insert_component_state(
        &mut self,
        bot: BotId,
        component: Component,
        state: MigrationState,
    ) {
        self.components
            .entry(bot)
            .or_default()
            .insert(component, state);
    }

    /// The counters of a day, created zero if absent (for loading them).
    pub fn daily_mut(&mut self, bot: BotId, day: i64) -> &mut DailyCounters {
        self.analytics.entry((bot, day)).or_default()
    }

    /// A user.
    pub fn user(&self, bot: &BotId, user_id: i64) -> Option<&UserView> {
        self.users.get(&(bot.clone(), user_id))
    }

    /// A chat partner's profile document.
    pub fn profile(&self, bot: &BotId, chat_id: i64) -> Option<&ProfileDocument> {
        self.profiles.get(&(bot.clone(), chat_id)).map(|p| &**p)
    }

    /// A chat partner's profile document, shared: cloning it costs a reference count (the hot
    /// path's read).
    pub fn profile_shared(&self, bot: &BotId, chat_id: i64) -> Option<Arc<ProfileDocument>> {
        self.profiles.get(&(bot.clone(), chat_id)).cloned()
    }

    /// Every profile of a bot (for export), by chat id.
    pub fn profiles(&self, bot: &BotId) -> BTreeMap<i64, &ProfileDocument> {
        self.profiles
            .iter()
            .filter(|((b, _), _)| b == bot)
            .map(|((_, chat), p)| (*chat, &**p))
            .collect()
    }

    /// Every bot with a profile or conversation.
    pub fn bots(&self) -> Vec<BotId> {
        let mut bots: Vec<BotId> = self
            .profiles
            .keys()
            .chain(self.conversations.keys())
            .map(|(b, _)| b.clone())
            .collect();
        bots.sort();
        bots.dedup();
        bots
    }

    /// A conversation.
    pub fn conversation(&self, bot: &BotId, chat_id: i64) -> Option<&ConversationView> {
        self.conversations.get(&(bot.clone(), chat_id))
    }

    /// Chat ids with a conversation, for a bot.
    pub fn conversation_chats(&self, bot: &BotId) -> Vec<i64> {
        let mut chats: Vec<i64> = self
            .conversations
            .keys()
            .filter(|(b, _)| b == bot)
            .map(|(_, c)| *c)
            .collect();
        chats.sort_unstable();
        chats
    }

    /// A configuration value.
    pub fn config_value(&self, bot: &BotId, scope: &str, key: &str) -> Option<&serde_json::Value> {
        self.config
            .get(bot)?
            .get(&(scope.to_owned(), key.to_owned()))
    }

    /// A component's migration state (`disabled` until changed).
    pub fn component_state(&self, bot: &BotId, component: Component) -> MigrationState {
        self.components
            .get(bot)
            .and_then(|c| c.get(&component))
            .copied()
            .unwrap_or_default()
    }

    /// The counters of a UTC day (`YYYY-MM-DD`).
    pub fn daily(&self, bot: &BotId, date: &str) -> Option<&DailyCounters> {
        self.analytics
            .get(&(bot.clone(), Timestamp::parse_date(date)?))
    }
}
