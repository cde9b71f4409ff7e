//! Conversations: the head (counts, times, clears), the bounded message tail, follow-ups.

use super::{Direction, MessageView, Projection};
use crate::events::{Event, RecordedEvent};
use crate::ids::BotId;

impl Projection {
    pub(super) fn apply_conversation_head(
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
}
