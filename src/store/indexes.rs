//! The indexes derived from the log: per-stream positions and the dedupe index (client event
//! ids, idempotency keys), and the rule that tells a retry from a conflict.

use dashmap::DashMap;
use hybridstore_wal::Position;
use uuid::Uuid;

use super::AppendResult;
use crate::error::InputError;
use crate::events::RecordedEvent;
use crate::ids::{BotId, StreamId, StreamVersion};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum DedupeKey {
    /// A client-supplied event id (UUIDs are global: no bot scope needed).
    EventId(Uuid),
    /// An idempotency key, scoped to its bot: two bots that see the same chat and message ids
    /// (and so build the same key) both append.
    Key(BotId, String),
}

/// A stream's entry in the per-stream index.
#[derive(Debug, Default)]
pub(super) struct StreamEntry {
    /// Position of each event, by stream version.
    pub(super) positions: Vec<Position>,
}

/// The indexes derived from the log, shared by the store and its writer thread.
/// Hashing is ahash: randomized (keys come from clients, so a predictable hash would invite
/// collision attacks) and several times faster than the standard SipHash on these keys.
#[derive(Debug, Default)]
pub(super) struct Indexes {
    pub(super) streams: DashMap<StreamId, StreamEntry, ahash::RandomState>,
    /// Client-supplied event ids and idempotency keys → the append that recorded them.
    pub(super) dedupe: DashMap<DedupeKey, Recorded, ahash::RandomState>,
}

/// What the dedupe index keeps per key: the append's result and its stream.
#[derive(Debug, Clone)]
pub(super) struct Recorded {
    pub(super) result: AppendResult,
    pub(super) stream: StreamId,
}

/// Whether an append is new, a retry of an earlier one, or a conflict.
pub(super) enum Verdict<O> {
    /// None of its events is recorded: append it.
    New,
    /// Every event is recorded (by its id or its key), all by one earlier append to the same
    /// stream: answer with that append's result.
    Duplicate(O),
    /// Some events are recorded and others not, or by different appends, or for another stream.
    Conflict,
}

/// Classifies an append by where its events' ids and keys were recorded (`lookup` gives the
/// recording append `O` and its stream). A retry may carry fresh event ids beside recorded keys
/// (an event counts as recorded if its id or its key is), and may name only some events of the
/// earlier append; what it may not do is mix recorded and unrecorded events — answering with the
/// earlier result would tell the caller that events were written when they were not.
pub(super) fn classify<O: Copy + PartialEq>(
    event_keys: &[Vec<DedupeKey>],
    stream: &StreamId,
    lookup: impl Fn(&DedupeKey) -> Option<(O, StreamId)>,
) -> Verdict<O> {
    let mut origin: Option<(O, StreamId)> = None;
    let mut recorded_events = 0;
    for keys in event_keys {
        let mut recorded = false;
        for key in keys {
            let Some((found, found_stream)) = lookup(key) else {
                continue;
            };
            match &origin {
                None => origin = Some((found, found_stream)),
                Some((o, st)) if *o == found && *st == found_stream => {}
                Some(_) => return Verdict::Conflict,
            }
            recorded = true;
        }
        recorded_events += usize::from(recorded);
    }
    match origin {
        None => Verdict::New,
        Some((o, st)) if st == *stream && recorded_events == event_keys.len() => {
            Verdict::Duplicate(o)
        }
        Some(_) => Verdict::Conflict,
    }
}

impl Indexes {
    /// The original result if `event_keys` are a retry of one recorded append to `stream`;
    /// `None` if none of them is recorded.
    ///
    /// # Errors
    /// [`InputError::IdempotencyConflict`], see [`classify`].
    pub(super) fn duplicate_of(
        &self,
        event_keys: &[Vec<DedupeKey>],
        stream: &StreamId,
    ) -> Result<Option<AppendResult>, InputError> {
        let lookup = |key: &DedupeKey| self.dedupe.get(key).map(|r| (r.result, r.stream.clone()));
        match classify(event_keys, stream, lookup) {
            Verdict::New => Ok(None),
            Verdict::Duplicate(result) => Ok(Some(result)),
            Verdict::Conflict => Err(InputError::IdempotencyConflict),
        }
    }

    /// Indexes sized for a log of `events` events, so a rebuild never rehashes them.
    pub(super) fn with_capacity(events: usize) -> Indexes {
        Indexes {
            streams: DashMap::with_capacity_and_hasher(events / 16, ahash::RandomState::new()),
            dedupe: DashMap::with_capacity_and_hasher(events / 2, ahash::RandomState::new()),
        }
    }
}

/// Records one event in the per-stream and dedupe indexes (at open).
pub(super) fn apply_to_indexes(indexes: Option<&Indexes>, event: &RecordedEvent) {
    let Some(Indexes { streams, dedupe }) = indexes else {
        return;
    };
    streams
        .entry(event.stream.clone())
        .or_default()
        .positions
        .push(event.position);
    // The append this event was part of, as it was returned to the appender.
    let back = u64::from(event.batch_index);
    let ahead = u64::from(event.batch_len.saturating_sub(1)).saturating_sub(back);
    let result = AppendResult {
        first_position: Position(event.position.0.saturating_sub(back)),
        last_position: event.position.advance(ahead),
        stream_version: StreamVersion(event.stream_version.0 + ahead),
    };
    if event.event_id_supplied {
        dedupe.insert(
            DedupeKey::EventId(event.event_id),
            Recorded {
                result,
                stream: event.stream.clone(),
            },
        );
    }
    if let Some(key) = &event.idempotency_key {
        dedupe.insert(
            DedupeKey::Key(event.bot_id.clone(), key.clone()),
            Recorded {
                result,
                stream: event.stream.clone(),
            },
        );
    }
}
