//! Erasing a subject from the log (design §10): [`Store::erase`] appends the erasure event and
//! destroys the subject's keys; [`finish_erasures`] completes, at open, an erasure a crash cut
//! between the two.
//!
//! The order, for a subject whose keys are on streams S (a chat's; a user's and their private
//! chat's):
//! 1. Take the append locks of S (in stream order). An append seals under its stream's lock, so
//!    from here no event sealed with the subject's current keys can be written any more.
//! 2. Retire the current key of each stream (in memory): appends after the erasure get a new
//!    epoch, created durably as any new key.
//! 3. Append the erasure event (`ChatErased` / `UserErased`, with the epochs it destroys) and
//!    wait for it to be durable; release the locks.
//! 4. Rewrite the key store without those keys (they become `Destroyed { position }`), and
//!    scrub the old copy with zeros before removing it.
//!
//! A crash after 3 and before the end of 4 leaves the erasure in the log with its keys still in
//! the key store: the next open finds the erasure while rebuilding and destroys them before it
//! serves anything.

use hybridstore_wal::Position;
use serde::Serialize;

use super::indexes::DedupeKey;
use super::validate::validate;
use super::{ExpectedVersion, NewEvent, Store};
use crate::crypto::{KeyStoreError, Keyring};
use crate::error::{InputError, Result, StoreError};
use crate::events::{ChatErased, ErasedKey, Event, Personal, UserErased};
use crate::ids::{StreamId, Subject, Timestamp};

/// Longest an erasure waits for its event to be durable before destroying the keys.
const ERASURE_SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What [`Store::erase`] did in the log and the key store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogErasure {
    /// Who.
    pub subject: Subject,
    /// The erasure event's position.
    pub position: Position,
    /// When it was recorded.
    pub erased_at: Timestamp,
    /// The keys destroyed (epoch 0: the stream never had a key).
    pub keys: Vec<ErasedKey>,
    /// The key store's generation after the keys were destroyed.
    pub key_store_generation: u64,
    /// The subject's events whose personal fields were sealed (now unreadable; an erasure
    /// repeated counts the ones the first made unreadable again).
    pub sealed_events: u64,
    /// The subject's events with personal fields written in the clear (before sealing existed):
    /// they cannot be shredded and are still readable in the log.
    pub plaintext_events: u64,
}

/// Erasures found while rebuilding: their keys and positions.
pub(super) type FoundErasures = Vec<(Vec<ErasedKey>, Position)>;

/// Notes an erasure event seen while rebuilding.
pub(super) fn note_erasure(found: &mut FoundErasures, event: &crate::events::RecordedEvent) {
    match &event.event {
        Event::UserErased(UserErased { keys }) | Event::ChatErased(ChatErased { keys })
            if !keys.is_empty() =>
        {
            found.push((keys.clone(), event.position));
        }
        _ => {}
    }
}

/// Destroys the keys of every erasure in `found` that the key store still holds (a crash cut the
/// erasure after its event was durable). Blocking I/O.
///
/// # Errors
/// The key store could not be rewritten.
pub(super) fn finish_erasures(keys: &Keyring, found: &FoundErasures) -> Result<(), KeyStoreError> {
    for (erased, position) in found {
        let streams: Vec<(String, u32)> =
            erased.iter().map(|k| (k.stream.clone(), k.epoch)).collect();
        let before = keys.generation();
        let after = keys.destroy(&streams, position.0)?;
        if after != before {
            tracing::warn!(
                position = %position,
                "finished an erasure a crash had interrupted: its keys are destroyed now"
            );
        }
    }
    Ok(())
}

impl Store {
    /// Erases a subject from the log: appends the erasure event and destroys the subject's keys
    /// (the module docs have the steps). Every projection of this store drops the subject as it
    /// applies the event; the sinks do when they reach it (`crate::erase` waits for them and
    /// writes the receipt). Erasing again is harmless: another erasure event, no key left to
    /// destroy.
    ///
    /// # Errors
    /// [`InputError::UnknownSubject`] if the log holds no event of the subject; a log or key
    /// store error (the erasure event may then be durable with its keys not yet destroyed: the
    /// next erase or open finishes it).
    pub async fn erase(&self, subject: &Subject) -> Result<LogErasure> {
        let mut streams = subject.key_streams();
        streams.sort();
        if streams.iter().all(|s| self.stream_head(s).is_none()) {
            return Err(InputError::UnknownSubject {
                subject: subject.to_string(),
            }
            .into());
        }
        let target = subject.stream();
        let mut guards = Vec::with_capacity(streams.len());
        for stream in &streams {
            guards.push((stream.clone(), self.lock_stream(stream).await));
        }
        // Retiring waits for the key store's writer (a rewrite's fsyncs): off the runtime.
        let names: Vec<String> = streams.iter().map(ToString::to_string).collect();
        let keyring = self.inner.keys.clone();
        let keys: Vec<ErasedKey> = tokio::task::spawn_blocking(move || {
            names
                .into_iter()
                .map(|stream| {
                    let epoch = keyring.retire(&stream);
                    ErasedKey { stream, epoch }
                })
                .collect()
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?;
        let event = match subject {
            Subject::Chat { .. } => Event::ChatErased(ChatErased { keys: keys.clone() }),
            Subject::User { .. } => Event::UserErased(UserErased { keys: keys.clone() }),
        };
        let events = vec![NewEvent::new(event)];
        let dedupe: Vec<Vec<DedupeKey>> = validate(&target, &events)?;
        let index = guards
            .iter()
            .position(|(s, _)| *s == target)
            .expect("the erasure's stream is one of the key streams");
        let (_, guard) = guards.swap_remove(index);
        let appended = self
            .append_locked(&target, guard, ExpectedVersion::Any, events, dedupe)
            .await?;
        drop(guards);
        // The rest runs in a task of its own: a caller that goes away (a client hanging up, a
        // timeout) must not cut the erasure between its event and the keys' destruction.
        let store = self.clone();
        let subject = subject.clone();
        tokio::spawn(async move {
            store
                .finish_erase(subject, streams, keys, appended.last_position)
                .await
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Steps 4 on of [`Store::erase`]: once the erasure event is durable (in `interval` mode an
    /// append returns before), destroy the keys, then count what was sealed and what was not.
    async fn finish_erase(
        &self,
        subject: Subject,
        streams: Vec<StreamId>,
        keys: Vec<ErasedKey>,
        position: Position,
    ) -> Result<LogErasure> {
        let wal = self.inner.wal.clone();
        let durable = tokio::task::spawn_blocking(move || {
            wal.wait_durable_beyond(position, ERASURE_SYNC_WAIT)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?;
        if durable <= position {
            return Err(StoreError::Task(format!(
                "the erasure event at {position} was not durable within {ERASURE_SYNC_WAIT:?}; its keys are destroyed when it is (the next erase or open)"
            )));
        }
        let destroy: Vec<(String, u32)> = keys
            .iter()
            .filter(|k| k.epoch > 0)
            .map(|k| (k.stream.clone(), k.epoch))
            .collect();
        let keyring = self.inner.keys.clone();
        let key_store_generation =
            tokio::task::spawn_blocking(move || keyring.destroy(&destroy, position.0))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
                .map_err(StoreError::KeyStore)?;
        let erased_at = self
            .read_positions(vec![position])
            .await?
            .first()
            .map_or_else(Timestamp::now, |e| e.recorded_at);
        let (sealed_events, plaintext_events) = self.count_personal(&streams, position).await?;
        Ok(LogErasure {
            subject,
            position,
            erased_at,
            keys,
            key_store_generation,
            sealed_events,
            plaintext_events,
        })
    }

    /// Of the events of `streams` before `end` with personal fields: how many are sealed, and
    /// how many were written in the clear.
    pub(crate) async fn count_personal(
        &self,
        streams: &[StreamId],
        end: Position,
    ) -> Result<(u64, u64)> {
        let mut positions = Vec::new();
        for stream in streams {
            if let Some(entry) = self.inner.indexes.streams.get(stream) {
                positions.extend(entry.positions.iter().copied().filter(|p| *p < end));
            }
        }
        positions.sort_unstable();
        let (mut sealed, mut clear) = (0, 0);
        for chunk in positions.chunks(1024) {
            for event in self.read_positions(chunk.to_vec()).await? {
                if !event.event.has_personal_fields() {
                    continue;
                }
                match event.personal {
                    Personal::Clear => clear += 1,
                    _ => sealed += 1,
                }
            }
        }
        Ok((sealed, clear))
    }
}
