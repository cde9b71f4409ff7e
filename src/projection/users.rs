//! Users: registration, identity, settings, blocks, erasure.

use hybridstore_wal::Position;

use super::{Projection, UserView};
use crate::events::Event;
use crate::ids::{BotId, Component, SubjectKind, Timestamp};

impl Projection {
    pub(super) fn apply_user(
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
            self.erase_chat(&key, position);
            self.mark_erased(&key.0, SubjectKind::User, user_id, position);
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
}
