//! Profiles: the chat partner's document in the old bot's layout.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{ProfileDocument, Projection};
use crate::events::{Event, RecordedEvent};
use crate::ids::BotId;

impl Projection {
    pub(super) fn apply_profile(
        &mut self,
        recorded: &RecordedEvent,
        key: &(BotId, i64),
        event: &Event,
    ) {
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
}
