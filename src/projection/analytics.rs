//! Analytics: daily counters of messages, active chats and LLM usage (UTC days).

use super::Projection;
use crate::events::{AnalyticsRecorded, Event, RecordedEvent};
use crate::ids::{BotId, Timestamp};

impl Projection {
    /// Counts a message in its day's counters.
    pub(super) fn apply_message_counters(
        &mut self,
        recorded: &RecordedEvent,
        key: &(BotId, i64),
        event: &Event,
    ) {
        let chat_id = key.1;
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

    /// Counts an `llm_call` analytics record.
    pub(super) fn apply_llm_call(&mut self, bot: BotId, at: Timestamp, e: &AnalyticsRecorded) {
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
}
