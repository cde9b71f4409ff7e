//! The read models' values: what a read of each component returns.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use hybridstore_wal::Position;
use serde::{Deserialize, Serialize};

use crate::events::{Event, Identity, JsonText, RecordedEvent};
use crate::ids::Timestamp;

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
    pub(crate) fn take_from_event(event: &mut RecordedEvent) -> Option<MessageView> {
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
    pub(super) chats_seen: HashSet<i64, ahash::RandomState>,
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

    /// The counters without the set of chats behind `active_chats` (what a read returns: the
    /// set is the projection's bookkeeping, and can be large).
    pub fn counts_only(&self) -> DailyCounters {
        DailyCounters {
            chats_seen: Default::default(),
            ..self.clone()
        }
    }

    /// Records that `chat` had a message that day, as loaded from a store of the counters
    /// (the count itself is loaded with the counters, not derived from this).
    pub fn insert_chat(&mut self, chat: i64) {
        self.chats_seen.insert(chat);
    }
}
