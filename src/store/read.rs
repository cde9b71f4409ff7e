//! Reads: stream and log reads, the last messages of a conversation, the projection with
//! `min_position`.

use std::time::Instant;

use hybridstore_wal::Position;
use serde::{Deserialize, Serialize};

use super::rebuild::rebuild;
use super::{RebuildStats, Store};
use crate::error::{Result, StoreError};
use crate::events::{decode_record, RecordedEvent};
use crate::ids::{StreamId, StreamKind, StreamVersion};
use crate::projection::{MessageView, Projection};
use crate::read::reached;

/// Which way to read a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadDirection {
    /// Oldest first, from the given version up.
    Forward,
    /// Newest first, from the given version down.
    Backward,
}

impl Store {
    /// Waits until the projection has applied `min_position` (if given), then runs `read` on it.
    ///
    /// # Errors
    /// [`StoreError::NotCaughtUp`] if the projection does not get there within the configured
    /// wait.
    pub async fn read_projection<T>(
        &self,
        min_position: Option<Position>,
        read: impl FnOnce(&Projection) -> T,
    ) -> Result<T> {
        if let Some(min) = min_position {
            self.wait_applied(min).await?;
        }
        let projection = self
            .inner
            .projection
            .read()
            .unwrap_or_else(|p| p.into_inner());
        Ok(read(&projection))
    }

    /// Waits (bounded) until the projection has applied the event at `min`; a projection that
    /// stopped fails the wait at once with its reason, instead of waiting out the bound.
    async fn wait_applied(&self, min: Position) -> Result<()> {
        let mut receiver = self.inner.applied.subscribe();
        let started = Instant::now();
        let wait = self.inner.config.read_wait_max;
        let waited = tokio::time::timeout(
            wait,
            receiver
                .wait_for(|applied| reached(*applied, min) || self.projection_error().is_some()),
        )
        .await;
        if matches!(waited, Ok(Ok(ref applied)) if reached(**applied, min)) {
            return Ok(());
        }
        if let Some(reason) = self.projection_error() {
            return Err(StoreError::ProjectionStopped { reason });
        }
        Err(StoreError::NotCaughtUp {
            min_position: min,
            applied: *self.inner.applied.borrow(),
            waited: started.elapsed(),
        })
    }

    /// Events of `stream` from version `from` in `direction`, at most `limit`.
    ///
    /// # Errors
    /// A log or decode error.
    pub async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        direction: ReadDirection,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        // Under `interval` or `never` durability an append returns before its records are
        // durable, and readers of the log see durable records only: leave those out.
        let durable_end = self.inner.wal.durable_end();
        let positions: Vec<Position> = {
            let Some(entry) = self.inner.indexes.streams.get(stream) else {
                return Ok(Vec::new());
            };
            let all = &entry.positions[..entry.positions.partition_point(|p| *p < durable_end)];
            let from = usize::try_from(from.0).unwrap_or(usize::MAX);
            match direction {
                ReadDirection::Forward => all.iter().skip(from).take(limit).copied().collect(),
                ReadDirection::Backward => {
                    let end = from.saturating_add(1).min(all.len());
                    all[..end].iter().rev().take(limit).copied().collect()
                }
            }
        };
        self.read_positions(positions).await
    }

    /// Reads the events at `positions` (in the order given).
    pub(super) async fn read_positions(
        &self,
        positions: Vec<Position>,
    ) -> Result<Vec<RecordedEvent>> {
        let wal = self.inner.wal.clone();
        let keys = self.inner.keys.clone();
        tokio::task::spawn_blocking(move || {
            positions
                .into_iter()
                .map(|position| {
                    let record = wal
                        .reader(position)?
                        .next_record()?
                        .ok_or(StoreError::Task(format!(
                            "position {position} is not durable"
                        )))?;
                    decode_record(record.position, &record.data, &keys)
                        .map_err(|source| StoreError::Decode { position, source })
                })
                .collect()
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Every event from `from`, at most `limit`, in log order.
    ///
    /// # Errors
    /// A log or decode error.
    pub async fn read_all(&self, from: Position, limit: usize) -> Result<Vec<RecordedEvent>> {
        let wal = self.inner.wal.clone();
        let keys = self.inner.keys.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = wal.reader(from)?;
            let mut events = Vec::new();
            while events.len() < limit {
                let Some(record) = reader.next_record()? else {
                    break;
                };
                events.push(decode_record(record.position, &record.data, &keys).map_err(
                    |source| StoreError::Decode {
                        position: record.position,
                        source,
                    },
                )?);
            }
            Ok(events)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The last `limit` messages of a conversation, oldest first; older than the in-memory tail
    /// are read from the log.
    ///
    /// # Errors
    /// [`StoreError::NotCaughtUp`], or a log or decode error.
    pub async fn last_messages(
        &self,
        stream: &StreamId,
        limit: usize,
        min_position: Option<Position>,
    ) -> Result<Vec<MessageView>> {
        Ok(self.last_messages_at(stream, limit, min_position).await?.0)
    }

    /// [`Store::last_messages`], with the projection's applied end the answer reflects.
    pub(crate) async fn last_messages_at(
        &self,
        stream: &StreamId,
        limit: usize,
        min_position: Option<Position>,
    ) -> Result<(Vec<MessageView>, Position)> {
        // Only conversations have messages; a user stream's key is a user id, which for a
        // private chat equals a chat id, so it must not be looked up as one.
        let (StreamKind::Conversation, Some(chat), bot) =
            (stream.kind(), stream.key(), stream.bot_id().clone())
        else {
            let applied = self
                .read_projection(min_position, Projection::applied_end)
                .await?;
            return Ok((Vec::new(), applied));
        };
        let (mut tail, all_in_memory, cleared_before, applied) = self
            .read_projection(min_position, |p| {
                let conversation = p.conversation(&bot, chat);
                // Copy only the messages asked for, newest `limit` of the tail.
                let tail: Vec<_> = conversation
                    .map(|c| {
                        c.tail
                            .iter()
                            .skip(c.tail.len().saturating_sub(limit))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                let all_in_memory = conversation.is_none_or(|c| c.retained <= c.tail.len() as u64);
                (
                    tail,
                    all_in_memory,
                    conversation.map_or(Position(0), |c| c.head.cleared_before),
                    p.applied_end(),
                )
            })
            .await?;
        if tail.len() >= limit || all_in_memory {
            let excess = tail.len().saturating_sub(limit);
            return Ok((tail.split_off(excess), applied));
        }
        // Older messages: walk the stream's positions backwards from the oldest one in memory.
        let oldest_in_memory = tail.first().map_or(applied, |m| m.position);
        let older: Vec<Position> = self
            .inner
            .indexes
            .streams
            .get(stream)
            .map(|entry| {
                entry
                    .positions
                    .iter()
                    .rev()
                    .copied()
                    .filter(|p| *p < oldest_in_memory && *p >= cleared_before)
                    .collect()
            })
            .unwrap_or_default();
        let mut wanted = limit - tail.len();
        let mut before = Vec::new();
        for chunk in older.chunks(64) {
            if wanted == 0 {
                break;
            }
            for event in self.read_positions(chunk.to_vec()).await? {
                if wanted == 0 {
                    break;
                }
                if let Some(message) = MessageView::from_event(&event) {
                    before.push(message);
                    wanted -= 1;
                }
            }
        }
        before.reverse();
        before.extend(tail);
        Ok((before, applied))
    }

    /// A fresh projection rebuilt from the whole log (for checks and `--verify`).
    ///
    /// # Errors
    /// A log or decode error.
    pub async fn rebuild_projection(&self) -> Result<(Projection, RebuildStats)> {
        let wal = self.inner.wal.clone();
        let tail_len = self.inner.config.conversation_tail_len;
        let keys = self.inner.keys.clone();
        tokio::task::spawn_blocking(move || {
            let mut projection = Projection::new(tail_len);
            let stats = rebuild(&wal, &keys, &mut projection, None, &mut Vec::new())?;
            Ok((projection, stats))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// A copy of the live projection once it has applied everything durable now.
    ///
    /// # Errors
    /// [`StoreError::NotCaughtUp`].
    pub async fn projection_snapshot(&self) -> Result<Projection> {
        self.read_projection(self.last_position(), Clone::clone)
            .await
    }
}
