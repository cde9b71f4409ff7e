//! Appends: what a caller hands in ([`NewEvent`], [`ExpectedVersion`]) and gets back
//! ([`AppendResult`]), and [`Store::append`].

use hybridstore_wal::{Durability, Position};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::validate::validate;
use super::writer::{self, AppendRequest};
use super::Store;
use crate::crypto::DataKey;
use crate::error::{InputError, Result, StoreError};
use crate::events::{decode_record, Event, StoredEvent};
use crate::ids::{StreamId, StreamKind, StreamVersion, Timestamp};

/// What an append expects of its stream (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have this version.
    Exact(StreamVersion),
}

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The event id (UUIDv7); generated if `None`. Supply it to make retries idempotent.
    pub event_id: Option<Uuid>,
    /// An idempotency key, e.g. `tg:{chat}:{message}:in`.
    pub idempotency_key: Option<String>,
    /// When it happened; now if `None`.
    pub occurred_at: Option<Timestamp>,
    /// The event.
    pub event: Event,
}

impl NewEvent {
    /// An event with a fresh id, happening now.
    pub fn new(event: Event) -> NewEvent {
        NewEvent {
            event_id: None,
            idempotency_key: None,
            occurred_at: None,
            event,
        }
    }

    /// Sets the idempotency key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> NewEvent {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the event id.
    #[must_use]
    pub fn with_id(mut self, id: Uuid) -> NewEvent {
        self.event_id = Some(id);
        self
    }

    /// Sets when it happened.
    #[must_use]
    pub fn at(mut self, occurred_at: Timestamp) -> NewEvent {
        self.occurred_at = Some(occurred_at);
        self
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// Position of the first event.
    pub first_position: Position,
    /// Position of the last event (pass it as `min_position` to read your writes).
    pub last_position: Position,
    /// The stream's version after the append (its last event's version).
    pub stream_version: StreamVersion,
}

/// Refuses the events only the store writes. Erasures and their receipts come from
/// `Store::erase` / `Hybrid::erase`: a client could otherwise make a subject read as erased while
/// its texts stay readable, or forge a complete receipt. A `UserErased` without keys stays what
/// it was before keys existed: the projections drop the user, the log keeps the events.
fn reserved_check(index: usize, event: &Event) -> Result<()> {
    let reserved = match event {
        Event::UserErased(crate::events::UserErased { keys }) => !keys.is_empty(),
        Event::ChatErased(_) | Event::ErasureReceiptRecorded(_) => true,
        _ => false,
    };
    if reserved {
        return Err(InputError::ErasureKeysReserved {
            index,
            event_type: event.type_name(),
        }
        .into());
    }
    Ok(())
}

/// Counts an append handed on (to the writer thread, or written by its caller) until it is
/// answered or its caller goes away.
struct InFlight<'a> {
    count: &'a std::sync::atomic::AtomicUsize,
    /// No other append was in flight when this one entered.
    was_alone: bool,
}

impl<'a> InFlight<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize) -> InFlight<'a> {
        let before = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight {
            count,
            was_alone: before == 0,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Store {
    /// Appends `events` to `stream` as one atomic batch.
    ///
    /// The steps: validate the input; answer a retry with the original result; take the stream's
    /// lock and check the expected version; encode the envelopes; hand them to the writer thread,
    /// which appends them in the next group commit and answers.
    ///
    /// # Errors
    /// [`StoreError::Input`] for bad input and [`StoreError::WrongExpectedVersion`] for a
    /// conflict (both append nothing); [`StoreError::Log`] when the log fails.
    pub async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        for (index, new) in events.iter().enumerate() {
            reserved_check(index, &new.event)?;
        }
        self.append_store_events(stream, expected, events).await
    }

    /// [`Store::append`] without refusing the events only the store writes (erasures, their
    /// receipts): for the store's own erasure and receipts.
    pub(crate) async fn append_store_events(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let keys = validate(stream, &events)?;
        if let Some(original) = self.inner.indexes.duplicate_of(&keys, stream)? {
            return Ok(original);
        }
        let guard = self.lock_stream(stream).await;
        self.append_locked(stream, guard, expected, events, keys)
            .await
    }

    /// Makes the keys of every subject stream in `streams` that has none, in one rewrite of the
    /// key store (what an import of many chats calls first). Returns how many it made.
    ///
    /// # Errors
    /// [`StoreError::KeyStore`] if the key store could not be written.
    pub async fn prepare_keys(&self, streams: &[StreamId]) -> Result<usize> {
        if !self.inner.config.seal_personal_fields {
            return Ok(0);
        }
        let names: Vec<String> = streams
            .iter()
            .filter(|s| matches!(s.kind(), StreamKind::User | StreamKind::Conversation))
            .map(ToString::to_string)
            .collect();
        let keys = self.inner.keys.clone();
        tokio::task::spawn_blocking(move || keys.create_missing(&names))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
            .map_err(StoreError::KeyStore)
    }

    /// Takes `stream`'s append lock: an owned guard, so that it can travel with the log append.
    pub(super) async fn lock_stream(&self, stream: &StreamId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .inner
            .stream_locks
            .entry(stream.clone())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// [`Store::append`] under `stream`'s lock, with the events validated (`keys`: their dedupe
    /// keys).
    pub(super) async fn append_locked(
        &self,
        stream: &StreamId,
        guard: tokio::sync::OwnedMutexGuard<()>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: Vec<Vec<super::indexes::DedupeKey>>,
    ) -> Result<AppendResult> {
        let inner = &self.inner;
        // A retry that raced the original past the first check finds it recorded now.
        if let Some(original) = inner.indexes.duplicate_of(&keys, stream)? {
            return Ok(original);
        }
        let first_version = self.check_expected(stream, expected)?;
        // Under the stream's lock: an erasure retires the subject's key under the same lock, so
        // no event sealed with a retired key lands after the erasure.
        let seal = self.sealing_key(stream, &events).await?;
        let records = self.encode_records(stream, first_version, &events, seal.as_ref())?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = AppendRequest {
            records,
            stream: stream.clone(),
            first_version,
            event_keys: keys,
            guard,
            reply,
        };
        self.hand_to_writer(request, answer).await
    }

    /// The version and position of `stream`'s last appended event, if it has any.
    pub fn stream_head(&self, stream: &StreamId) -> Option<(StreamVersion, Position)> {
        let entry = self.inner.indexes.streams.get(stream)?;
        let last = *entry.positions.last()?;
        Some((StreamVersion(entry.positions.len() as u64 - 1), last))
    }

    /// The version the append's first event gets, if the stream is where `expected` says.
    fn check_expected(&self, stream: &StreamId, expected: ExpectedVersion) -> Result<u64> {
        let current = self
            .inner
            .indexes
            .streams
            .get(stream)
            .map(|s| s.positions.len() as u64);
        let actual = current.and_then(|n| n.checked_sub(1)).map(StreamVersion);
        let matches = match expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.is_none(),
            ExpectedVersion::Exact(version) => actual == Some(version),
        };
        if !matches {
            return Err(StoreError::WrongExpectedVersion {
                stream: stream.clone(),
                expected,
                actual,
            });
        }
        Ok(current.unwrap_or(0))
    }

    /// The key the append's personal fields are sealed with: the subject's current one, created
    /// (durably, before anything sealed with it is written) if it has none. `None`: not a
    /// subject's stream, or no event with personal fields.
    async fn sealing_key(
        &self,
        stream: &StreamId,
        events: &[NewEvent],
    ) -> Result<Option<(u32, DataKey)>> {
        if !self.inner.config.seal_personal_fields
            || !matches!(stream.kind(), StreamKind::User | StreamKind::Conversation)
            || !events.iter().any(|e| e.event.has_personal_fields())
        {
            return Ok(None);
        }
        let name = stream.to_string();
        if let Some(found) = self.inner.keys.current(&name) {
            return Ok(Some(found));
        }
        let keys = self.inner.keys.clone();
        tokio::task::spawn_blocking(move || keys.current_or_create(&name))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
            .map(Some)
            .map_err(StoreError::KeyStore)
    }

    /// The log records of the append: one encoded envelope per event (personal fields sealed
    /// with `seal`), each checked to decode back and to fit the size limits.
    fn encode_records(
        &self,
        stream: &StreamId,
        first_version: u64,
        events: &[NewEvent],
        seal: Option<&(u32, DataKey)>,
    ) -> Result<Vec<Vec<u8>>> {
        let config = &self.inner.config;
        let recorded_at = Timestamp::now();
        let mut records = Vec::with_capacity(events.len());
        for (index, new) in events.iter().enumerate() {
            let event_id = new.event_id.unwrap_or_else(Uuid::now_v7);
            let stored = StoredEvent::new_sealed(
                stream,
                StreamVersion(first_version + index as u64),
                (index as u32, events.len() as u32),
                event_id,
                new.idempotency_key.clone(),
                recorded_at,
                new.occurred_at.unwrap_or(recorded_at),
                &new.event,
                seal.map(|(epoch, key)| (*epoch, key)),
            )
            .and_then(|mut s| {
                if new.event_id.is_some() {
                    s.flags |= crate::events::FLAG_CLIENT_EVENT_ID;
                }
                s.encode()
            })
            .map_err(|e| StoreError::Task(format!("encoding an event: {e}")))?;
            // Pair check: never write a record this build cannot read back (a JSON value nested
            // past the decoder's limit would otherwise stop the projection and every later open).
            if let Err(error) = decode_record(Position(0), &stored, &self.inner.keys) {
                return Err(InputError::Unreadable {
                    index,
                    reason: error.to_string(),
                }
                .into());
            }
            if stored.len() > config.event_size_max_bytes {
                return Err(InputError::EventTooLarge {
                    index,
                    event_type: new.event.type_name(),
                    encoded_len: stored.len(),
                    max: config.event_size_max_bytes,
                }
                .into());
            }
            records.push(stored);
        }
        let encoded_len: u64 = records.iter().map(|r| r.len() as u64 + 4).sum();
        let encoded_len_max = self.inner.wal.options().append_encoded_len_max() / 2;
        if encoded_len > encoded_len_max {
            return Err(InputError::AppendTooLarge {
                encoded_len,
                max: encoded_len_max,
            }
            .into());
        }
        Ok(records)
    }

    /// Writes `request` here if the writer role is free (returning `None`: it is answered), or
    /// gives it back. It runs to its end inside the caller's poll (no await), so a dropped
    /// future cannot interrupt it.
    fn write_own(&self, request: AppendRequest) -> Option<AppendRequest> {
        if !self.inner.config.appends_by_caller {
            return Some(request);
        }
        // A log append may block (an fdatasync in `always` mode, the interval syncer's lock in
        // `interval` mode, a rotation's fsyncs in any mode): only on a multi-thread runtime,
        // which can move this worker's other tasks away (`block_in_place`; in `never` mode the
        // rare rotation runs on the worker as it is). Elsewhere the writer thread takes it.
        // (A thread of a current-thread runtime that has entered a multi-thread runtime's
        // handle would pass this check and make `block_in_place` panic: don't do that.)
        if !tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        {
            return Some(request);
        }
        let Some(role) = self.inner.writer_role.try_take() else {
            return Some(request);
        };
        let inner = &self.inner;
        let write = || writer::process(&inner.wal, &inner.indexes, vec![request]);
        if inner.wal.options().durability == Durability::Never {
            write();
        } else {
            tokio::task::block_in_place(write);
        }
        drop(role);
        None
    }

    /// Hands an append to the writer thread and waits for its answer.
    ///
    /// The writer thread appends, updates the indexes and only then releases the stream's lock:
    /// if this caller stops waiting (its future is dropped, e.g. a client disconnects), the
    /// append is still recorded before the stream accepts another append. Otherwise the next
    /// append would reuse the stream version and a retry would append the events twice.
    async fn hand_to_writer(
        &self,
        request: AppendRequest,
        answer: tokio::sync::oneshot::Receiver<Result<AppendResult>>,
    ) -> Result<AppendResult> {
        let sender = self
            .inner
            .appender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(sender) = sender else {
            return Err(StoreError::Closed);
        };
        // The lighter path: when this is the only append in flight (no batch can form, so a
        // group commit would gain nothing) and no batch is being written, this task writes its
        // own append, without the hand-off to the writer thread and back.
        let in_flight = InFlight::enter(&self.inner.appends_in_flight);
        let alone = in_flight.was_alone;
        let request = match if alone {
            self.write_own(request)
        } else {
            Some(request)
        } {
            None => {
                drop(sender);
                return answer.await.map_err(|_| StoreError::Closed)?;
            }
            Some(request) => request,
        };
        sender.send(request).map_err(|_| StoreError::Closed)?;
        // Hold no sender while waiting: `close` stops the writer once every sender is gone, and
        // must not wait for a caller that stopped polling.
        drop(sender);
        let answered = answer.await.map_err(|_| StoreError::Closed)?;
        drop(in_flight);
        answered
    }
}
