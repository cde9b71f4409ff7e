//! The log projection: in-memory read models rebuilt from the log at open and kept live by
//! following it. This is the embedded default's read path (design §4, "Components and their
//! reads") and the reference the Postgres projection is compared with.
//!
//! # Invariants
//! - `apply` is a pure function of the events in log order: a projection built live equals one
//!   rebuilt from scratch (`tests/store_property.rs` checks this).
//! - Memory stays bounded per conversation: only the last `tail_len` messages are kept; older ones
//!   are read from the log through the store's per-stream index.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// The projection's maps: ahash, randomized and fast (keys come from clients, so no fixed hash).
type Map<K, V> = HashMap<K, V, ahash::RandomState>;

use hybridstore_wal::Position;
use serde::{Deserialize, Serialize};

use crate::events::{Event, Identity, JsonText, RecordedEvent};
use crate::ids::{BotId, Component, ComponentSet, MigrationState, StreamKind, Timestamp};

/// A user of the bot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserView {
    /// Telegram user id.
    pub user_id: i64,
    /// `active` or `blocked`.
    pub blocked: bool,
    /// Why the user was blocked.
    pub blocked_reason: Option<String>,
    /// Telegram identity.
    pub identity: Identity,
    /// Settings (a JSON object).
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// When the user registered.
    pub registered_at: Timestamp,
}

/// The chat partner's profile, in the old bot's JSON document layout (`girls_data/{chat}.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileDocument {
    /// The chat.
    pub chat_id: i64,
    /// The partner's name.
    pub name: String,
    /// Last message time: as imported, or RFC 3339 for live messages.
    pub last_activity: Option<serde_json::Value>,
    /// Messages in and out.
    pub message_count: u64,
    /// Analyses: id → summary.
    pub summary: BTreeMap<String, String>,
    /// Fact snapshots: id → facts.
    pub profile: BTreeMap<String, serde_json::Value>,
    /// The last reply's response id (the next LLM request's `previous_response_id`).
    pub previous_response_id: Option<String>,
}

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the partner.
    In,
    /// From the bot.
    Out,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageView {
    /// Where the event is in the log.
    pub position: Position,
    /// In or out.
    pub direction: Direction,
    /// The text.
    /// The text, shared: a read copies a reference count, not the text.
    pub text: Arc<str>,
    /// When.
    pub at: Timestamp,
    /// The `ts` of an imported message, as the old file had it.
    pub legacy_ts: Option<serde_json::Value>,
}

impl MessageView {
    /// The message an event describes, taking its text out of the event (which keeps an empty
    /// text), if it is a message.
    fn take_from_event(event: &mut RecordedEvent) -> Option<MessageView> {
        let (direction, text, legacy_ts) = match &mut event.event {
            Event::MessageReceived(m) => (Direction::In, std::mem::take(&mut m.text), &m.legacy_ts),
            Event::MessageSent(m) => (Direction::Out, std::mem::take(&mut m.text), &m.legacy_ts),
            _ => return None,
        };
        Some(MessageView {
            position: event.position,
            direction,
            text: Arc::from(text),
            at: event.occurred_at,
            legacy_ts: legacy_ts.as_ref().map(JsonText::value),
        })
    }

    /// The message an event describes, if it is a message.
    pub fn from_event(event: &RecordedEvent) -> Option<MessageView> {
        let (direction, text, legacy_ts) = match &event.event {
            Event::MessageReceived(m) => (Direction::In, &m.text, &m.legacy_ts),
            Event::MessageSent(m) => (Direction::Out, &m.text, &m.legacy_ts),
            _ => return None,
        };
        Some(MessageView {
            position: event.position,
            direction,
            text: Arc::from(text.as_str()),
            at: event.occurred_at,
            legacy_ts: legacy_ts.as_ref().map(|t| t.value()),
        })
    }
}

/// A conversation's head: counts and times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConversationHead {
    /// Messages received.
    pub messages_in: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// Last received message time.
    pub last_in_at: Option<Timestamp>,
    /// Last sent message time.
    pub last_out_at: Option<Timestamp>,
    /// Messages received since the bot last replied.
    pub unanswered: u64,
    /// Messages before this position were cleared by `HistoryCleared`.
    pub cleared_before: Position,
}

/// A conversation: its head and the last messages.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConversationView {
    /// Counts and times.
    pub head: ConversationHead,
    /// The last messages, oldest first, at most the projection's `tail_len`.
    pub tail: VecDeque<MessageView>,
    /// Messages since the last `HistoryCleared` (all of them are in `tail` while this is at most
    /// the tail length, so a read needs no trip to the log).
    pub retained: u64,
    /// Follow-ups scheduled and not yet fired or cancelled: id → due time.
    pub followups: BTreeMap<String, Timestamp>,
}

/// Daily counters derived from events (UTC days).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DailyCounters {
    /// Messages received.
    pub messages_in: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// Chats with at least one message that day.
    pub active_chats: u64,
    /// LLM calls (sent messages with generation metadata, and `llm_call` analytics records).
    pub llm_calls: u64,
    /// LLM tokens (prompt + completion).
    pub llm_tokens: u64,
    #[serde(skip)]
    chats_seen: HashSet<i64, ahash::RandomState>,
}

impl DailyCounters {
    /// The chats with a message that day (what `active_chats` counts).
    pub fn chats(&self) -> impl Iterator<Item = i64> + '_ {
        self.chats_seen.iter().copied()
    }

    /// Whether `chat` had a message that day.
    pub fn has_chat(&self, chat: i64) -> bool {
        self.chats_seen.contains(&chat)
    }

    /// Records that `chat` had a message that day, as loaded from a store of the counters
    /// (the count itself is loaded with the counters, not derived from this).
    pub fn insert_chat(&mut self, chat: i64) {
        self.chats_seen.insert(chat);
    }
}

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
                let tokens = e
                    .properties
                    .value()
                    .get("tokens")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0);
                let day = self.analytics.entry((bot, at.day())).or_default();
                day.llm_calls = day.llm_calls.saturating_add(1);
                day.llm_tokens = day.llm_tokens.saturating_add(tokens);
            }
            // The store refuses events on the wrong kind of stream, so nothing else reaches here
            // but events of components this projection does not maintain.
            _ => {}
        }
    }

    fn apply_user(
        &mut self,
        bot: BotId,
        user_id: i64,
        position: Position,
        at: Timestamp,
        event: &Event,
    ) {
        let key = (bot, user_id);
        if let Event::UserErased(_) = event {
            // Their private chat (a Telegram private chat's id is the user's id) goes too: the
            // profile the bot kept of them, and every message so far, as `HistoryCleared`
            // does (reads must not fetch the older messages from the log either).
            if self.maintained.contains(Component::Profiles) {
                self.profiles.remove(&key);
            }
            if self.maintained.contains(Component::Conversations) {
                let mut cleared = ConversationView::default();
                cleared.head.cleared_before = position;
                self.conversations.insert(key.clone(), cleared);
            }
        }
        if !self.maintained.contains(Component::Users) {
            return;
        }
        match event {
            Event::UserRegistered(e) if self.users.contains_key(&key) => {
                // Registering again (e.g. /start twice) keeps settings and blocks.
                if let Some(user) = self.users.get_mut(&key) {
                    user.identity = e.identity.clone();
                }
            }
            Event::UserRegistered(e) => {
                self.users.insert(
                    key,
                    UserView {
                        user_id,
                        blocked: false,
                        blocked_reason: None,
                        identity: e.identity.clone(),
                        settings: serde_json::Map::new(),
                        registered_at: at,
                    },
                );
            }
            Event::UserErased(_) => {
                self.users.remove(&key);
            }
            _ => {
                let Some(user) = self.users.get_mut(&key) else {
                    return;
                };
                match event {
                    Event::UserIdentityUpdated(e) => user.identity = e.identity.clone(),
                    Event::UserSettingsChanged(e) => {
                        if let serde_json::Value::Object(changes) = e.settings.value() {
                            for (name, value) in changes {
                                if value.is_null() {
                                    user.settings.remove(&name);
                                } else {
                                    user.settings.insert(name, value);
                                }
                            }
                        }
                    }
                    Event::UserBlocked(e) => {
                        user.blocked = true;
                        user.blocked_reason = e.reason.clone();
                    }
                    Event::UserUnblocked(_) => {
                        user.blocked = false;
                        user.blocked_reason = None;
                    }
                    _ => {}
                }
            }
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
            if let Event::MessageReceived(_) | Event::MessageSent(_) = event {
                let day = self
                    .analytics
                    .entry((key.0.clone(), recorded.occurred_at.day()))
                    .or_default();
                if day.chats_seen.insert(chat_id) {
                    day.active_chats = day.active_chats.saturating_add(1);
                }
                match event {
                    Event::MessageReceived(_) => {
                        day.messages_in = day.messages_in.saturating_add(1);
                    }
                    Event::MessageSent(sent) => {
                        day.messages_out = day.messages_out.saturating_add(1);
                        if let Some(generation) = &sent.generation {
                            day.llm_calls = day.llm_calls.saturating_add(1);
                            day.llm_tokens = day.llm_tokens.saturating_add(
                                u64::from(generation.prompt_tokens)
                                    + u64::from(generation.completion_tokens),
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
        if self.maintained.contains(Component::Conversations) {
            self.apply_conversation_head(recorded, message, key, event);
        }
    }

    fn apply_profile(&mut self, recorded: &RecordedEvent, key: &(BotId, i64), event: &Event) {
        let chat_id = key.1;
        match event {
            Event::ProfileCreated(e) => {
                // Creating a profile that exists (a bot restarting a chat) keeps its facts,
                // analyses and counters and only takes the new name.
                match self.profiles.get_mut(key) {
                    Some(profile) => Arc::make_mut(profile).name = e.name.clone(),
                    None => {
                        self.profiles.insert(
                            key.clone(),
                            Arc::new(ProfileDocument {
                                chat_id,
                                name: e.name.clone(),
                                last_activity: None,
                                message_count: 0,
                                summary: BTreeMap::new(),
                                profile: BTreeMap::new(),
                                previous_response_id: None,
                            }),
                        );
                    }
                }
                return;
            }
            Event::ProfileDeleted(_) => {
                self.profiles.remove(key);
                return;
            }
            _ => {}
        }
        if let Some(profile) = self.profiles.get_mut(key) {
            let profile = Arc::make_mut(profile);
            match event {
                Event::ProfileRenamed(e) => profile.name = e.name.clone(),
                Event::ProfileFactsRecorded(e) => {
                    profile
                        .profile
                        .insert(e.snapshot_id.clone(), e.facts.value());
                }
                Event::ConversationAnalyzed(e) => {
                    profile
                        .summary
                        .insert(e.analysis_id.clone(), e.summary.clone());
                }
                Event::ProfileLegacyStateImported(e) => {
                    profile.last_activity = e.last_activity.as_ref().map(|t| t.value());
                    profile.message_count = e.message_count;
                    profile.previous_response_id = e.previous_response_id.clone();
                }
                Event::MessageReceived(_) | Event::MessageSent(_) => {
                    profile.message_count = profile.message_count.saturating_add(1);
                    profile.last_activity =
                        Some(serde_json::Value::String(recorded.occurred_at.to_rfc3339()));
                    if let Event::MessageSent(sent) = event {
                        if let Some(response_id) =
                            sent.generation.as_ref().and_then(|g| g.response_id.clone())
                        {
                            profile.previous_response_id = Some(response_id);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn apply_conversation_head(
        &mut self,
        recorded: &RecordedEvent,
        message: Option<MessageView>,
        key: (BotId, i64),
        event: &Event,
    ) {
        let conversation = self.conversations.entry(key).or_default();
        match event {
            Event::HistoryCleared(_) => {
                conversation.tail.clear();
                conversation.retained = 0;
                conversation.head.cleared_before = recorded.position;
            }
            Event::FollowupScheduled(e) => {
                conversation
                    .followups
                    .insert(e.followup_id.clone(), e.due_at);
            }
            Event::FollowupCancelled(e) => {
                conversation.followups.remove(&e.followup_id);
            }
            Event::FollowupFired(e) => {
                conversation.followups.remove(&e.followup_id);
            }
            Event::MessageReceived(_) | Event::MessageSent(_) => {
                let Some(message) = message.or_else(|| MessageView::from_event(recorded)) else {
                    return;
                };
                let head = &mut conversation.head;
                if message.direction == Direction::In {
                    head.messages_in = head.messages_in.saturating_add(1);
                    head.last_in_at = Some(message.at);
                    head.unanswered = head.unanswered.saturating_add(1);
                } else {
                    head.messages_out = head.messages_out.saturating_add(1);
                    head.last_out_at = Some(message.at);
                    head.unanswered = 0;
                }
                conversation.tail.push_back(message);
                conversation.retained = conversation.retained.saturating_add(1);
                while conversation.tail.len() > self.tail_len {
                    conversation.tail.pop_front();
                }
            }
            _ => {}
        }
    }

    // Listing and loading: how a store of the read models (Postgres) writes a projection's
    // entries out and reads them back in. Loaded entries are taken as they are; only `apply`
    // derives anything.

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
