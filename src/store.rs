//! The [`Store`] handle: appends events to the log and serves reads from the log projection.
//!
//! An append, step by step:
//! 1. Validate the input (stream kind, sizes, keys) — bad input appends nothing.
//! 2. If an event id or idempotency key was already recorded, return the original result.
//! 3. Take the stream's lock (appends to different streams proceed in parallel and share the
//!    log's group commit), check the expected version, encode the envelopes.
//! 4. Append them to the log as one atomic batch (durable when it returns, in `always` mode).
//! 5. Record the new stream version, the positions and the dedupe keys; release the lock.
//!
//! The projection follows the durable log on its own thread, so reads may lag an append by a few
//! microseconds; a read that passes `min_position` waits (bounded) until the projection has
//! applied it.
//!
//! # Invariants
//! - The per-stream index and the dedupe index are derived from the log: rebuilt at open.
//! - Only durable events reach the projection and subscribers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hybridstore_wal::{Options as WalOptions, Position, Wal};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::error::{InputError, Result, StoreError};
use crate::events::{decode_record, Event, RecordedEvent, StoredEvent};
use crate::ids::{StreamId, StreamKind, StreamVersion, Timestamp};
use crate::projection::Projection;

/// Default limit on one event's encoded size: 1 MiB.
pub const EVENT_SIZE_MAX_BYTES_DEFAULT: usize = 1024 * 1024;
/// Most events in one append.
pub const APPEND_EVENTS_MAX: usize = 1000;
/// Longest idempotency key.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 256;

/// Configuration of a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Data directory; the log lives in `data_dir/wal`.
    pub data_dir: PathBuf,
    /// Options of the log (durability, segment size, storage seam).
    pub wal: WalOptions,
    /// Largest encoded event accepted.
    pub event_size_max_bytes: usize,
    /// Messages kept in memory per conversation; older ones are read from the log.
    pub conversation_tail_len: usize,
    /// Longest a read with `min_position` waits for the projection.
    pub read_wait_max: Duration,
}

impl StoreConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            wal: WalOptions::default(),
            event_size_max_bytes: EVENT_SIZE_MAX_BYTES_DEFAULT,
            conversation_tail_len: 50,
            read_wait_max: Duration::from_secs(2),
        }
    }

    /// The log directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join(crate::WAL_SUBDIR)
    }
}

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

/// Which way to read a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadDirection {
    /// Oldest first, from the given version up.
    Forward,
    /// Newest first, from the given version down.
    Backward,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum DedupeKey {
    EventId(Uuid),
    Key(String),
}

/// A stream's entry in the per-stream index.
#[derive(Debug, Default)]
struct StreamEntry {
    /// Position of each event, by stream version.
    positions: Vec<Position>,
}

/// The indexes derived from the log, shared by the store and its writer thread.
/// Hashing is ahash: randomized (keys come from clients, so a predictable hash would invite
/// collision attacks) and several times faster than the standard SipHash on these keys.
#[derive(Debug, Default)]
struct Indexes {
    streams: DashMap<StreamId, StreamEntry, ahash::RandomState>,
    /// Client-supplied event ids and idempotency keys → the append that recorded them.
    dedupe: DashMap<DedupeKey, Recorded, ahash::RandomState>,
}

/// What the dedupe index keeps per key: the append's result and its stream.
#[derive(Debug, Clone)]
struct Recorded {
    result: AppendResult,
    stream: StreamId,
}

/// Whether an append is new, a retry of an earlier one, or a conflict.
enum Verdict<O> {
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
fn classify<O: Copy + PartialEq>(
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
    fn duplicate_of(
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
    fn with_capacity(events: usize) -> Indexes {
        Indexes {
            streams: DashMap::with_capacity_and_hasher(events / 16, ahash::RandomState::new()),
            dedupe: DashMap::with_capacity_and_hasher(events / 2, ahash::RandomState::new()),
        }
    }
}

/// One append handed to the writer thread.
struct AppendRequest {
    records: Vec<Vec<u8>>,
    stream: StreamId,
    first_version: u64,
    /// Per event, its client-supplied id and idempotency key (as dedupe keys).
    event_keys: Vec<Vec<DedupeKey>>,
    /// The stream's lock, released by the writer once the indexes are updated.
    guard: tokio::sync::OwnedMutexGuard<()>,
    reply: tokio::sync::oneshot::Sender<Result<AppendResult>>,
}

struct Inner {
    config: StoreConfig,
    wal: Wal,
    indexes: Arc<Indexes>,
    stream_locks: DashMap<StreamId, Arc<tokio::sync::Mutex<()>>, ahash::RandomState>,
    /// Requests to the writer thread; `None` once closing.
    appender: Mutex<Option<std::sync::mpsc::Sender<AppendRequest>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    projection: RwLock<Projection>,
    applied: watch::Sender<Position>,
    tail_error: Mutex<Option<String>>,
    shutdown: Arc<AtomicBool>,
    tailer: Mutex<Option<JoinHandle<()>>>,
}

/// The store: cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.inner.config.data_dir)
            .finish_non_exhaustive()
    }
}

/// What a rebuild from the log found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildStats {
    /// Events applied.
    pub events: u64,
    /// Position one past the last event.
    pub end: Position,
}

impl Store {
    /// Opens the store: opens (and recovers) the log, rebuilds the indexes and the projection
    /// from it, and starts following it.
    ///
    /// # Errors
    /// A log error, or [`StoreError::Decode`] naming the position of a record that does not decode
    /// (an unknown event type is reported, never skipped).
    pub async fn open(config: StoreConfig) -> Result<Store> {
        let blocking_config = config.clone();
        tokio::task::spawn_blocking(move || Store::open_blocking(blocking_config))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// [`Store::open`] for callers outside an async runtime.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_blocking(config: StoreConfig) -> Result<Store> {
        let wal = Wal::open(config.wal_dir(), config.wal.clone())?;
        let events = usize::try_from(wal.durable_end().0 - wal.first_position().0).unwrap_or(0);
        let indexes = Arc::new(Indexes::with_capacity(events));
        let mut projection = Projection::new(config.conversation_tail_len);
        let stats = rebuild(&wal, &mut projection, Some(&indexes))?;
        let (appender, requests) = std::sync::mpsc::channel();
        let writer = {
            let (wal, indexes) = (wal.clone(), indexes.clone());
            std::thread::Builder::new()
                .name("hybridstore-writer".into())
                .spawn(move || append_loop(&wal, &indexes, &requests))
                .map_err(|e| StoreError::Task(e.to_string()))?
        };
        tracing::info!(events = stats.events, end = %stats.end, "rebuilt the log projection");
        let (applied, _) = watch::channel(projection.applied_end());
        let inner = Arc::new(Inner {
            config,
            wal,
            indexes,
            stream_locks: DashMap::with_hasher(ahash::RandomState::new()),
            appender: Mutex::new(Some(appender)),
            writer: Mutex::new(Some(writer)),
            projection: RwLock::new(projection),
            applied,
            tail_error: Mutex::new(None),
            shutdown: Arc::new(AtomicBool::new(false)),
            tailer: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        let from = stats.end;
        let shutdown = inner.shutdown.clone();
        let reader = inner.wal.reader(from)?;
        let handle = std::thread::Builder::new()
            .name("hybridstore-projector".into())
            .spawn(move || follow(weak, reader, shutdown))
            .map_err(|e| StoreError::Task(e.to_string()))?;
        *inner.tailer.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(Store { inner })
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
    }

    /// Position one past the last durable event.
    pub fn durable_end(&self) -> Position {
        self.inner.wal.durable_end()
    }

    /// Appends `events` to `stream` as one atomic batch.
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
        let inner = &self.inner;
        let keys = validate(stream, &events)?;
        if let Some(original) = inner.indexes.duplicate_of(&keys, stream)? {
            return Ok(original);
        }
        let lock = inner
            .stream_locks
            .entry(stream.clone())
            .or_default()
            .clone();
        // An owned guard, so that it can travel with the log append below.
        let guard = lock.lock_owned().await;
        if let Some(original) = inner.indexes.duplicate_of(&keys, stream)? {
            return Ok(original);
        }
        let current = inner
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
        let first_version = current.unwrap_or(0);
        let recorded_at = Timestamp::now();
        let mut records = Vec::with_capacity(events.len());
        for (index, new) in events.iter().enumerate() {
            let event_id = new.event_id.unwrap_or_else(Uuid::now_v7);
            let stored = StoredEvent::new(
                stream,
                StreamVersion(first_version + index as u64),
                (index as u32, events.len() as u32),
                event_id,
                new.idempotency_key.clone(),
                recorded_at,
                new.occurred_at.unwrap_or(recorded_at),
                &new.event,
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
            if let Err(error) = decode_record(Position(0), &stored) {
                return Err(InputError::Unreadable {
                    index,
                    reason: error.to_string(),
                }
                .into());
            }
            if stored.len() > inner.config.event_size_max_bytes {
                return Err(InputError::EventTooLarge {
                    index,
                    event_type: new.event.type_name(),
                    encoded_len: stored.len(),
                    max: inner.config.event_size_max_bytes,
                }
                .into());
            }
            records.push(stored);
        }
        let encoded_len: u64 = records.iter().map(|r| r.len() as u64 + 4).sum();
        let encoded_len_max = inner.wal.options().append_encoded_len_max() / 2;
        if encoded_len > encoded_len_max {
            return Err(InputError::AppendTooLarge {
                encoded_len,
                max: encoded_len_max,
            }
            .into());
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = AppendRequest {
            records,
            stream: stream.clone(),
            first_version,
            event_keys: keys,
            guard,
            reply,
        };
        // The writer thread appends, updates the indexes and only then releases the stream's
        // lock: if this caller stops waiting (its future is dropped, e.g. a client disconnects),
        // the append is still recorded before the stream accepts another append. Otherwise the
        // next append would reuse the stream version and a retry would append the events twice.
        let sender = inner
            .appender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(sender) = sender else {
            return Err(StoreError::Closed);
        };
        sender.send(request).map_err(|_| StoreError::Closed)?;
        // Hold no sender while waiting: `close` stops the writer once every sender is gone, and
        // must not wait for a caller that stopped polling.
        drop(sender);
        answer.await.map_err(|_| StoreError::Closed)?
    }

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

    async fn wait_applied(&self, min: Position) -> Result<()> {
        let mut receiver = self.inner.applied.subscribe();
        let started = Instant::now();
        let wait = self.inner.config.read_wait_max;
        let reached = tokio::time::timeout(wait, receiver.wait_for(|applied| *applied > min)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ if self.projection_error().is_some() => Err(StoreError::ProjectionStopped {
                reason: self.projection_error().unwrap_or_default(),
            }),
            _ => Err(StoreError::NotCaughtUp {
                min_position: min,
                applied: *self.inner.applied.borrow(),
                waited: started.elapsed(),
            }),
        }
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
    async fn read_positions(&self, positions: Vec<Position>) -> Result<Vec<RecordedEvent>> {
        let wal = self.inner.wal.clone();
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
                    decode_record(record.position, &record.data)
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
        tokio::task::spawn_blocking(move || {
            let mut reader = wal.reader(from)?;
            let mut events = Vec::new();
            while events.len() < limit {
                let Some(record) = reader.next_record()? else {
                    break;
                };
                events.push(
                    decode_record(record.position, &record.data).map_err(|source| {
                        StoreError::Decode {
                            position: record.position,
                            source,
                        }
                    })?,
                );
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
    ) -> Result<Vec<crate::projection::MessageView>> {
        // Only conversations have messages; a user stream's key is a user id, which for a
        // private chat equals a chat id, so it must not be looked up as one.
        let (StreamKind::Conversation, Some(chat), bot) =
            (stream.kind(), stream.key(), stream.bot_id().clone())
        else {
            return Ok(Vec::new());
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
            return Ok(tail.split_off(excess));
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
                if let Some(message) = crate::projection::MessageView::from_event(&event) {
                    before.push(message);
                    wanted -= 1;
                }
            }
        }
        before.reverse();
        before.extend(tail);
        Ok(before)
    }

    /// A fresh projection rebuilt from the whole log (for checks and `--verify`).
    ///
    /// # Errors
    /// A log or decode error.
    pub async fn rebuild_projection(&self) -> Result<(Projection, RebuildStats)> {
        let wal = self.inner.wal.clone();
        let tail_len = self.inner.config.conversation_tail_len;
        tokio::task::spawn_blocking(move || {
            let mut projection = Projection::new(tail_len);
            let stats = rebuild(&wal, &mut projection, None)?;
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
        let end = self.durable_end();
        let min = (end.0 > 0).then(|| Position(end.0 - 1));
        self.read_projection(min, Clone::clone).await
    }

    /// Follows the durable log from `from`: every event exactly once, in order.
    ///
    /// # Errors
    /// [`StoreError::Log`] if `from` was truncated away.
    pub fn subscribe(&self, from: Position) -> Result<Subscription> {
        let mut reader = self.inner.wal.reader(from)?;
        let (sender, receiver) = mpsc::channel(1024);
        let shutdown = self.inner.shutdown.clone();
        std::thread::Builder::new()
            .name("hybridstore-subscription".into())
            .spawn(move || loop {
                if shutdown.load(Ordering::Relaxed) || sender.is_closed() {
                    return;
                }
                let item = match reader.next_blocking(Duration::from_millis(100)) {
                    Ok(None) => continue,
                    Ok(Some(record)) => {
                        decode_record(record.position, &record.data).map_err(|source| {
                            StoreError::Decode {
                                position: record.position,
                                source,
                            }
                        })
                    }
                    Err(error) => Err(StoreError::Log(error)),
                };
                let failed = item.is_err();
                if sender.blocking_send(item).is_err() || failed {
                    return;
                }
            })
            .map_err(|e| StoreError::Task(e.to_string()))?;
        Ok(Subscription { receiver })
    }

    /// Stops following the log and closes it cleanly. Other clones fail afterwards.
    ///
    /// # Errors
    /// A log error from the clean shutdown.
    pub async fn close(self) -> Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.shutdown_blocking())
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The error that stopped the projection, if any (a record that does not decode).
    pub fn projection_error(&self) -> Option<String> {
        self.inner
            .tail_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Inner {
    /// Stops the writer thread after it has finished the appends already handed to it.
    fn stop_writer(&self) {
        self.appender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }

    fn shutdown_blocking(&self) -> Result<()> {
        self.stop_writer();
        self.shutdown.store(true, Ordering::Relaxed);
        // Closing the log first wakes the projector from its wait for new records, so the join
        // returns at once rather than after the projector's poll interval.
        let closed = self.wal.clone().close();
        if let Some(handle) = self.tailer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = handle.join();
        }
        closed?;
        Ok(())
    }
}

impl Drop for Inner {
    /// A store dropped without [`Store::close`] still stops its projector and closes the log, so
    /// the directory's lock is free for the next open at once.
    fn drop(&mut self) {
        self.stop_writer();
        self.shutdown.store(true, Ordering::Relaxed);
        // Close the log first: it wakes the projector, so the join below does not wait out the
        // projector's poll interval.
        if let Err(error) = self.wal.clone().close() {
            tracing::warn!(%error, "closing the log on drop failed");
        }
        let handle = self.tailer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            // The projector may itself hold the last reference; it must not join itself.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

/// A live subscription: durable events in log order, each exactly once.
#[derive(Debug)]
pub struct Subscription {
    receiver: mpsc::Receiver<Result<RecordedEvent>>,
}

impl Subscription {
    /// The next event; waits for it to become durable. `None` once the store has closed.
    pub async fn next(&mut self) -> Option<Result<RecordedEvent>> {
        self.receiver.recv().await
    }
}

fn validate(stream: &StreamId, events: &[NewEvent]) -> Result<Vec<Vec<DedupeKey>>, InputError> {
    if events.is_empty() {
        return Err(InputError::EmptyAppend);
    }
    if events.len() > APPEND_EVENTS_MAX {
        return Err(InputError::TooManyEvents {
            count: events.len(),
            max: APPEND_EVENTS_MAX,
        });
    }
    let mut keys: Vec<Vec<DedupeKey>> = Vec::with_capacity(events.len());
    for (index, new) in events.iter().enumerate() {
        if new.event.stream_kind() != stream.kind() {
            return Err(InputError::WrongStreamKind {
                event_type: new.event.type_name(),
                stream: stream.clone(),
                expected: new.event.stream_kind(),
            });
        }
        check_storable(index, new)?;
        if let Event::UserSettingsChanged(e) = &new.event {
            if !e.settings.value().is_object() {
                return Err(InputError::NotAnObject { field: "settings" });
            }
        }
        if let Event::ProfileFactsRecorded(e) = &new.event {
            if !e.facts.value().is_object() {
                return Err(InputError::NotAnObject { field: "facts" });
            }
        }
        let mut own = Vec::new();
        if let Some(id) = new.event_id {
            own.push(DedupeKey::EventId(id));
        }
        if let Some(key) = &new.idempotency_key {
            if key.len() > IDEMPOTENCY_KEY_LEN_MAX {
                return Err(InputError::IdempotencyKeyTooLong { len: key.len() });
            }
            own.push(DedupeKey::Key(key.clone()));
        }
        if own
            .iter()
            .any(|key| keys.iter().flatten().any(|k| k == key))
        {
            return Err(InputError::DuplicateInAppend { index });
        }
        keys.push(own);
    }
    Ok(keys)
}

/// Earliest time an event may carry: 0001-01-01T00:00:00Z.
pub const TIMESTAMP_MIN: Timestamp = Timestamp(-62_135_596_800_000);
/// Latest time an event may carry: 9999-12-31T23:59:59.999Z.
pub const TIMESTAMP_MAX: Timestamp = Timestamp(253_402_300_799_999);

/// Refuses what the log could hold but a read model could not: NUL characters in any text, and
/// times outside the years 1 to 9999.
fn check_storable(index: usize, new: &NewEvent) -> Result<(), InputError> {
    let times = [
        ("occurred_at", new.occurred_at),
        (
            "due_at",
            match &new.event {
                Event::FollowupScheduled(e) => Some(e.due_at),
                _ => None,
            },
        ),
    ];
    for (field, time) in times {
        if let Some(time) = time {
            if !(TIMESTAMP_MIN..=TIMESTAMP_MAX).contains(&time) {
                return Err(InputError::TimestampOutOfRange {
                    field,
                    value_ms: time.0,
                });
            }
        }
    }
    let mut finder = NulFinder::default();
    // The JSON rendering visits every text, embedded JSON documents included; serde_json writes
    // U+0000 as the escape `\u0000`.
    if serde_json::to_writer(&mut finder, &new.event).is_ok() && finder.found {
        return Err(InputError::NulCharacter {
            index,
            event_type: new.event.type_name(),
        });
    }
    Ok(())
}

/// Watches JSON text for the escape of U+0000 (`\u0000` after an odd run of backslashes; an
/// even run is escaped backslashes followed by plain text).
#[derive(Debug, Default)]
struct NulFinder {
    backslashes: usize,
    /// Bytes of `u0000` matched after an odd run of backslashes.
    matched: usize,
    found: bool,
}

impl std::io::Write for NulFinder {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        for &byte in bytes {
            if self.matched > 0 && byte == b'0' {
                self.matched += 1;
                if self.matched == 5 {
                    self.found = true;
                    self.matched = 0;
                }
                continue;
            }
            self.matched = 0;
            if byte == b'\\' {
                self.backslashes += 1;
                continue;
            }
            if byte == b'u' && self.backslashes % 2 == 1 {
                self.matched = 1;
            }
            self.backslashes = 0;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Applies every durable event of `wal` to `projection` (and fills the indexes, if given).
fn rebuild(
    wal: &Wal,
    projection: &mut Projection,
    indexes: Option<&Indexes>,
) -> Result<RebuildStats> {
    let mut events = 0u64;
    let mut reader = wal.reader(wal.first_position())?;
    // Reading and decoding run on a second thread, a chunk ahead of applying: on a machine with
    // two cores, decoding costs about as much as applying, so the pipeline nearly halves a
    // rebuild.
    let (chunks, received) = std::sync::mpsc::sync_channel::<Result<Vec<RecordedEvent>>>(4);
    // Emptied chunks go back to the decoder: a fresh 1024-event buffer per chunk would be fresh
    // pages for the kernel to zero every time.
    let (recycle, recycled) = std::sync::mpsc::sync_channel::<Vec<RecordedEvent>>(8);
    let end = std::thread::scope(|scope| -> Result<Position> {
        let decoder = scope.spawn(move || -> Position {
            let mut streams = crate::events::StreamCache::default();
            loop {
                let mut chunk = recycled
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(REBUILD_CHUNK_EVENTS));
                while chunk.len() < REBUILD_CHUNK_EVENTS {
                    let record = match reader.next_record() {
                        Ok(Some(record)) => record,
                        Ok(None) => break,
                        Err(error) => {
                            let _ = chunks.send(Err(error.into()));
                            return reader.position();
                        }
                    };
                    match crate::events::decode_record_cached(
                        record.position,
                        &record.data,
                        &mut streams,
                    ) {
                        Ok(event) => {
                            // The indexes are filled here, beside decoding, so the two threads
                            // carry similar loads (the projection's apply is the other half).
                            apply_to_indexes(indexes, &event);
                            chunk.push(event);
                        }
                        Err(source) => {
                            let _ = chunks.send(Err(StoreError::Decode {
                                position: record.position,
                                source,
                            }));
                            return reader.position();
                        }
                    }
                }
                let done = chunk.len() < REBUILD_CHUNK_EVENTS;
                if !chunk.is_empty() && chunks.send(Ok(chunk)).is_err() {
                    return reader.position();
                }
                if done {
                    return reader.position();
                }
            }
        });
        for chunk in received {
            let mut chunk = chunk?;
            for event in chunk.drain(..) {
                projection.apply_owned(event);
                events += 1;
            }
            let _ = recycle.try_send(chunk);
        }
        decoder
            .join()
            .map_err(|_| StoreError::Task("the rebuild's decoder thread panicked".into()))
    })?;
    projection.advance_to(end);
    Ok(RebuildStats { events, end })
}

/// Events decoded per chunk handed from the rebuild's decoder to its applier.
const REBUILD_CHUNK_EVENTS: usize = 1024;

/// Records one event in the per-stream and dedupe indexes (at open).
fn apply_to_indexes(indexes: Option<&Indexes>, event: &RecordedEvent) {
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
            DedupeKey::Key(key.clone()),
            Recorded {
                result,
                stream: event.stream.clone(),
            },
        );
    }
}

/// Most appends joined into one log batch by the writer thread.
const WRITER_BATCH_REQUESTS_MAX: usize = 1024;

/// The writer thread: joins every queued append into one log batch (one frame, one `fdatasync`),
/// then records each append in the indexes, releases its stream lock and answers it.
fn append_loop(wal: &Wal, indexes: &Indexes, requests: &std::sync::mpsc::Receiver<AppendRequest>) {
    let bytes_max = wal.options().append_encoded_len_max();
    let request_bytes =
        |r: &AppendRequest| r.records.iter().map(|x| x.len() as u64 + 4).sum::<u64>();
    let mut carried: Option<AppendRequest> = None;
    loop {
        let first = match carried.take() {
            Some(request) => request,
            None => match requests.recv() {
                Ok(request) => request,
                Err(_) => return,
            },
        };
        let mut bytes = request_bytes(&first);
        let mut batch = vec![first];
        while batch.len() < WRITER_BATCH_REQUESTS_MAX {
            let Ok(next) = requests.try_recv() else { break };
            let next_bytes = request_bytes(&next);
            if bytes + next_bytes > bytes_max {
                carried = Some(next);
                break;
            }
            bytes += next_bytes;
            batch.push(next);
        }
        // The last word on duplicates is here: only this thread records keys, so two first-time
        // appends with the same event id or idempotency key (even to different streams, which do
        // not share a lock) cannot both be written.
        let mut seen: HashMap<DedupeKey, (usize, StreamId), ahash::RandomState> =
            HashMap::default();
        let mut duplicate_of: Vec<Option<Result<AppendResult, usize>>> =
            Vec::with_capacity(batch.len());
        let mut conflicts: Vec<bool> = Vec::with_capacity(batch.len());
        for (index, request) in batch.iter().enumerate() {
            // Where each key was recorded: in the index (an earlier append), or by an earlier
            // request of this batch.
            let lookup = |key: &DedupeKey| {
                if let Some(recorded) = indexes.dedupe.get(key) {
                    return Some((Ok(recorded.result), recorded.stream.clone()));
                }
                seen.get(key)
                    .map(|(earlier, stream)| (Err(*earlier), stream.clone()))
            };
            let verdict = classify(&request.event_keys, &request.stream, lookup);
            match verdict {
                Verdict::New => {
                    let keys = request.event_keys.iter().flatten().cloned();
                    seen.extend(keys.map(|key| (key, (index, request.stream.clone()))));
                    duplicate_of.push(None);
                    conflicts.push(false);
                }
                Verdict::Duplicate(origin) => {
                    duplicate_of.push(Some(origin));
                    conflicts.push(false);
                }
                Verdict::Conflict => {
                    duplicate_of.push(Some(Err(usize::MAX)));
                    conflicts.push(true);
                }
            }
        }
        let records: Vec<&[u8]> = batch
            .iter()
            .zip(&duplicate_of)
            .filter(|(_, verdict)| verdict.is_none())
            .flat_map(|(r, _)| r.records.iter().map(Vec::as_slice))
            .collect();
        let appended = if records.is_empty() {
            Ok(None)
        } else {
            wal.append(&records).map(Some)
        };
        match appended {
            Ok(appended) => {
                let mut position = appended.map_or(Position(0), |a| a.first);
                let mut results: Vec<AppendResult> = Vec::with_capacity(batch.len());
                for ((request, verdict), conflict) in
                    batch.into_iter().zip(duplicate_of).zip(conflicts)
                {
                    if conflict {
                        results.push(AppendResult {
                            first_position: Position(0),
                            last_position: Position(0),
                            stream_version: StreamVersion(0),
                        });
                        drop(request.guard);
                        let _ = request
                            .reply
                            .send(Err(InputError::IdempotencyConflict.into()));
                        continue;
                    }
                    let result = match verdict {
                        Some(Ok(original)) => original,
                        Some(Err(earlier)) => results[earlier],
                        None => {
                            let count = request.records.len() as u64;
                            let result = AppendResult {
                                first_position: position,
                                last_position: Position(position.0 + count - 1),
                                stream_version: StreamVersion(request.first_version + count - 1),
                            };
                            position = position.advance(count);
                            indexes
                                .streams
                                .entry(request.stream.clone())
                                .or_default()
                                .positions
                                .extend(
                                    (result.first_position.0..=result.last_position.0)
                                        .map(Position),
                                );
                            for key in request.event_keys.into_iter().flatten() {
                                indexes.dedupe.insert(
                                    key,
                                    Recorded {
                                        result,
                                        stream: request.stream.clone(),
                                    },
                                );
                            }
                            result
                        }
                    };
                    results.push(result);
                    drop(request.guard);
                    let _ = request.reply.send(Ok(result));
                }
            }
            Err(error) => {
                // The log is poisoned or closed: every append of the batch fails with its cause.
                let cause = match &error {
                    hybridstore_wal::Error::Poisoned { cause } => cause.clone(),
                    other => hybridstore_wal::PoisonCause {
                        op: "append",
                        kind: std::io::ErrorKind::Other,
                        message: other.to_string(),
                    },
                };
                let mut first_error = Some(error);
                for request in batch {
                    let error =
                        first_error
                            .take()
                            .unwrap_or_else(|| hybridstore_wal::Error::Poisoned {
                                cause: cause.clone(),
                            });
                    let error = match error {
                        hybridstore_wal::Error::Closed => StoreError::Closed,
                        other => StoreError::Log(other),
                    };
                    let _ = request.reply.send(Err(error));
                }
            }
        }
    }
}

/// The projector thread: applies durable events as they come, publishing how far it got.
fn follow(
    inner: std::sync::Weak<Inner>,
    mut reader: hybridstore_wal::Reader,
    shutdown: Arc<AtomicBool>,
) {
    while !shutdown.load(Ordering::Relaxed) {
        let record = match reader.next_blocking(Duration::from_millis(100)) {
            Ok(Some(record)) => record,
            Ok(None) => continue,
            Err(error) => {
                // A log closed by `close` or drop is the normal end, not a failure.
                if !shutdown.load(Ordering::Relaxed) {
                    report_tail_error(&inner, format!("the projection stopped: {error}"));
                }
                return;
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        let mut batch = vec![record];
        while batch.len() < 1024 {
            match reader.next_record() {
                Ok(Some(record)) => batch.push(record),
                _ => break,
            }
        }
        // Decode before taking the write lock, so readers wait only for the applying.
        let mut decoded = Vec::with_capacity(batch.len());
        let mut failure = None;
        for record in &batch {
            match decode_record(record.position, &record.data) {
                Ok(event) => decoded.push(event),
                Err(error) => {
                    failure = Some(format!(
                        "the projection stopped at position {}: {error}",
                        record.position
                    ));
                    break;
                }
            }
        }
        let mut projection = inner.projection.write().unwrap_or_else(|p| p.into_inner());
        for event in decoded {
            projection.apply_owned(event);
        }
        if let Some(message) = failure {
            let end = projection.applied_end();
            drop(projection);
            inner.applied.send_replace(end);
            tracing::error!("{message}");
            *inner.tail_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
            return;
        }
        let end = projection.applied_end();
        drop(projection);
        inner.applied.send_replace(end);
    }
}

fn report_tail_error(inner: &std::sync::Weak<Inner>, message: String) {
    tracing::error!("{message}");
    if let Some(inner) = inner.upgrade() {
        *inner.tail_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
    }
}
