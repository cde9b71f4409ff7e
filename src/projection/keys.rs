//! [`Keys`]: the entries of the read models that a set of events may change. Every store of the
//! read models that writes only what a batch touched (the Postgres sink) and every cache that
//! invalidates what a batch changed computes them here, beside the projection whose dispatch they
//! mirror.

use std::collections::HashSet;

use super::Projection;
use crate::events::{Event, RecordedEvent};
use crate::ids::{BotId, Component, ComponentSet, StreamKind, SubjectKind};

/// The entries a set of events may change, per component. A superset is harmless: an entry
/// touched but unchanged is written back as it was; one absent after applying is deleted (it was
/// absent before, or the events removed it).
#[derive(Debug, Default, Clone)]
pub struct Keys {
    /// Users (bot, user id).
    pub users: HashSet<(BotId, i64)>,
    /// Profiles (bot, chat id).
    pub profiles: HashSet<(BotId, i64)>,
    /// Conversations (bot, chat id).
    pub conversations: HashSet<(BotId, i64)>,
    /// Configuration values (bot, scope, key).
    pub config: HashSet<(BotId, String, String)>,
    /// Component states (bot, component).
    pub components: HashSet<(BotId, Component)>,
    /// Days of analytics (bot, days since 1970-01-01).
    pub days: HashSet<(BotId, i64)>,
    /// (bot, day, chat) of messages: the only rows of `analytics_daily_chats` a batch can add.
    pub day_chats: HashSet<(BotId, i64, i64)>,
    /// Erasure marks (bot, kind, id) the batch sets.
    pub erasures: HashSet<(BotId, SubjectKind, i64)>,
}

impl Keys {
    /// Notes what `recorded` may change in the components of `set`. Mirrors the dispatch of
    /// `Projection::apply`.
    pub fn note(&mut self, recorded: &RecordedEvent, set: ComponentSet) {
        let bot = &recorded.bot_id;
        let event = &recorded.event;
        let is_message = matches!(event, Event::MessageReceived(_) | Event::MessageSent(_));
        match (recorded.stream.kind(), recorded.stream.key()) {
            (StreamKind::User, Some(user)) => {
                if set.contains(Component::Users) {
                    self.users.insert((bot.clone(), user));
                }
                if let Event::UserErased(_) = event {
                    if set.contains(Component::Profiles) {
                        self.profiles.insert((bot.clone(), user));
                    }
                    if set.contains(Component::Conversations) {
                        self.conversations.insert((bot.clone(), user));
                    }
                    if erasing(set) {
                        self.erasures.insert((bot.clone(), SubjectKind::User, user));
                        self.erasures.insert((bot.clone(), SubjectKind::Chat, user));
                    }
                }
            }
            (StreamKind::Conversation, Some(chat)) => {
                if set.contains(Component::Profiles) {
                    self.profiles.insert((bot.clone(), chat));
                }
                if set.contains(Component::Conversations) {
                    self.conversations.insert((bot.clone(), chat));
                }
                if matches!(event, Event::ChatErased(_)) && erasing(set) {
                    self.erasures.insert((bot.clone(), SubjectKind::Chat, chat));
                }
                if is_message && set.contains(Component::Analytics) {
                    let day = recorded.occurred_at.day();
                    self.days.insert((bot.clone(), day));
                    self.day_chats.insert((bot.clone(), day, chat));
                }
            }
            (StreamKind::Bot, _) if set.contains(Component::Configuration) => match event {
                Event::ConfigValueSet(e) => {
                    self.config
                        .insert((bot.clone(), e.scope.clone(), e.key.clone()));
                }
                Event::ConfigValueUnset(e) => {
                    self.config
                        .insert((bot.clone(), e.scope.clone(), e.key.clone()));
                }
                Event::ComponentStateChanged(e) => {
                    self.components.insert((bot.clone(), e.component));
                }
                _ => {}
            },
            (StreamKind::Telemetry, _) if set.contains(Component::Analytics) => {
                if let Event::AnalyticsRecorded(_) = event {
                    self.days.insert((bot.clone(), recorded.occurred_at.day()));
                }
            }
            _ => {}
        }
    }
}

/// Whether a projection of `set` keeps erasure marks (the erasure's own projection rule).
fn erasing(set: ComponentSet) -> bool {
    set.contains(Component::Users)
        || set.contains(Component::Profiles)
        || set.contains(Component::Conversations)
}

/// The entries of `keys` as `projection` has them, in a projection of their own (what a rebuild
/// hands to its writer while it goes on applying).
pub fn subset(projection: &Projection, keys: &Keys) -> Projection {
    let mut out = Projection::with_components(0, projection.components());
    for (bot_id, user) in &keys.users {
        if let Some(found) = projection.user(bot_id, *user) {
            out.insert_user(bot_id.clone(), found.clone());
        }
    }
    for (bot_id, chat) in &keys.profiles {
        if let Some(found) = projection.profile(bot_id, *chat) {
            out.insert_profile(bot_id.clone(), found.clone());
        }
    }
    for (bot_id, chat) in &keys.conversations {
        if let Some(found) = projection.conversation(bot_id, *chat) {
            let mut conversation = found.clone();
            conversation.tail.clear();
            out.insert_conversation(bot_id.clone(), *chat, conversation);
        }
    }
    for (bot_id, scope, key) in &keys.config {
        if let Some(value) = projection.config_value(bot_id, scope, key) {
            out.insert_config_value(bot_id.clone(), scope.clone(), key.clone(), value.clone());
        }
    }
    for (bot_id, component) in &keys.components {
        let state = projection.component_state(bot_id, *component);
        out.insert_component_state(bot_id.clone(), *component, state);
    }
    for (bot_id, kind, id) in &keys.erasures {
        if let Some(position) = projection.erasure(bot_id, *kind, *id) {
            out.insert_erasure(bot_id.clone(), *kind, *id, position);
        }
    }
    for (bot_id, day) in &keys.days {
        if let Some(found) = projection.daily_by_day(bot_id, *day) {
            *out.daily_mut(bot_id.clone(), *day) = found.clone();
        }
    }
    out
}
