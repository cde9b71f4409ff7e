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
//! # Layout
//! - `append.rs`: the append's steps; `validate.rs`: what input is refused; `indexes.rs`: the
//!   per-stream and dedupe indexes and the retry-or-conflict rule; `writer.rs`: the writer thread
//!   and the writer role (an append alone is written by its caller).
//! - `read.rs`: stream, log and projection reads; `subscribe.rs`: the fan-out; `follow.rs`: the
//!   projector thread; `rebuild.rs`: the rebuild at open; `config.rs`.
//!
//! # Invariants
//! - The per-stream index and the dedupe index are derived from the log: rebuilt at open.
//! - Only durable events reach the projection and subscribers.

mod append;
mod config;
mod erase;
mod follow;
mod indexes;
mod read;
mod rebuild;
mod subscribe;
mod validate;
mod writer;

pub use append::{AppendResult, ExpectedVersion, NewEvent};
pub use config::{
    StoreConfig, APPEND_EVENTS_MAX, EVENT_SIZE_MAX_BYTES_DEFAULT, IDEMPOTENCY_KEY_LEN_MAX,
};
pub use erase::LogErasure;
pub use read::ReadDirection;
pub use subscribe::Subscription;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use dashmap::DashMap;
use hybridstore_wal::{LogId, Position, Wal};
use tokio::sync::watch;

use crate::crypto::Keyring;
use crate::error::{Result, StoreError};
use crate::ids::StreamId;
use crate::projection::Projection;
use indexes::Indexes;
use writer::AppendRequest;

struct Inner {
    config: StoreConfig,
    wal: Wal,
    indexes: Arc<Indexes>,
    stream_locks: DashMap<StreamId, Arc<tokio::sync::Mutex<()>>, ahash::RandomState>,
    /// Requests to the writer thread; `None` once closing.
    appender: Mutex<Option<std::sync::mpsc::Sender<AppendRequest>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Who writes to the log (the writer thread, or an appender on the lighter path).
    writer_role: Arc<writer::WriterRole>,
    /// Appends handed on and not yet answered (the lighter path is for an append alone).
    appends_in_flight: std::sync::atomic::AtomicUsize,
    projection: RwLock<Projection>,
    applied: watch::Sender<Position>,
    tail_error: Mutex<Option<String>>,
    shutdown: Arc<AtomicBool>,
    /// The projector and fan-out threads, joined at close.
    followers: Mutex<Vec<JoinHandle<()>>>,
    /// Feeds every subscription.
    fanout: Arc<subscribe::Fanout>,
    /// The log's id (a writable open always has one).
    log_id: LogId,
    /// The subjects' keys: seals personal fields on append, opens them on every read.
    keys: Arc<Keyring>,
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
        let log_id = wal.log_id().ok_or_else(|| {
            StoreError::Task(
                "the log opened without an id (a writable open always gives one)".into(),
            )
        })?;
        let mut keyring = Keyring::open(
            config.wal.fs.clone(),
            &config.data_dir,
            log_id,
            config.master_key.clone(),
        )
        .map_err(StoreError::KeyStore)?;
        if config.key_store_skips_sync_for_tests {
            keyring.skip_sync_for_tests();
        }
        let keys = Arc::new(keyring);
        let events = usize::try_from(wal.durable_end().0 - wal.first_position().0).unwrap_or(0);
        let indexes = Arc::new(Indexes::with_capacity(events));
        let mut projection = Projection::new(config.conversation_tail_len);
        let mut erasures = Vec::new();
        let stats = rebuild::rebuild(&wal, &keys, &mut projection, Some(&indexes), &mut erasures)?;
        // An erasure the log holds whose keys are still in the key store (a crash between the
        // two): finish it before anything is served.
        erase::finish_erasures(&keys, &erasures).map_err(StoreError::KeyStore)?;
        let (appender, requests) = std::sync::mpsc::channel();
        let writer_role = Arc::new(writer::WriterRole::default());
        let writer = {
            let (wal, indexes, role) = (wal.clone(), indexes.clone(), writer_role.clone());
            std::thread::Builder::new()
                .name("hybridstore-writer".into())
                .spawn(move || writer::append_loop(&wal, &indexes, &role, &requests))
                .map_err(|e| StoreError::Task(e.to_string()))?
        };
        tracing::info!(events = stats.events, end = %stats.end, "rebuilt the log projection");
        let (applied, _) = watch::channel(projection.applied_end());
        let shutdown = Arc::new(AtomicBool::new(false));
        let fanout = subscribe::Fanout::new(wal.clone(), keys.clone(), stats.end, shutdown.clone());
        let inner = Arc::new(Inner {
            config,
            wal,
            indexes,
            stream_locks: DashMap::with_hasher(ahash::RandomState::new()),
            appender: Mutex::new(Some(appender)),
            writer: Mutex::new(Some(writer)),
            writer_role,
            appends_in_flight: std::sync::atomic::AtomicUsize::new(0),
            projection: RwLock::new(projection),
            applied,
            tail_error: Mutex::new(None),
            shutdown: shutdown.clone(),
            followers: Mutex::new(Vec::new()),
            fanout,
            log_id,
            keys,
        });
        let weak = Arc::downgrade(&inner);
        let reader = inner.wal.reader(stats.end)?;
        let projector = std::thread::Builder::new()
            .name("hybridstore-projector".into())
            .spawn(move || follow::follow(weak, reader, shutdown))
            .map_err(|e| StoreError::Task(e.to_string()))?;
        let fanout = inner.fanout.clone();
        let fanout = std::thread::Builder::new()
            .name("hybridstore-fanout".into())
            .spawn(move || fanout.run())
            .map_err(|e| StoreError::Task(e.to_string()))?;
        inner
            .followers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([projector, fanout]);
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

    /// The subjects' keyring (the key store).
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.inner.keys
    }

    /// The id of the log (given when it was created; every sink records it with its cursors).
    pub fn log_id(&self) -> LogId {
        self.inner.log_id
    }

    /// The position of the last durable event (`None` for an empty log): what a read passes as
    /// `min_position` to see everything durable now.
    pub fn last_position(&self) -> Option<Position> {
        self.durable_end().0.checked_sub(1).map(Position)
    }

    /// Position one past the last durable event.
    pub fn durable_end(&self) -> Position {
        self.inner.wal.durable_end()
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

    /// Why the store cannot take appends or serve fresh reads, if it cannot: the log's writer
    /// poisoned or closed, or the projection stopped. `None`: ready.
    pub fn not_ready(&self) -> Option<String> {
        if let Some(why) = self.inner.wal.refusing() {
            return Some(format!("the log refuses appends ({why})"));
        }
        self.projection_error()
            .map(|why| format!("the log projection stopped: {why}"))
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
        self.fanout.shutting_down();
        // Closing the log first wakes the projector and the fan-out from their wait for new
        // records, so the joins return at once rather than after their poll interval.
        let closed = self.wal.clone().close();
        // Every record is durable now (the close synced them): subscriptions end there.
        self.fanout.closed_at(self.wal.durable_end());
        self.join_followers();
        closed?;
        Ok(())
    }

    /// Joins the projector and fan-out threads (not the current thread: the projector may
    /// itself hold the last reference to the store).
    fn join_followers(&self) {
        let handles =
            std::mem::take(&mut *self.followers.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in handles {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for Inner {
    /// A store dropped without [`Store::close`] still stops its projector and closes the log, so
    /// the directory's lock is free for the next open at once.
    fn drop(&mut self) {
        self.stop_writer();
        self.shutdown.store(true, Ordering::Relaxed);
        self.fanout.shutting_down();
        // Close the log first: it wakes the projector, so the join below does not wait out the
        // projector's poll interval.
        if let Err(error) = self.wal.clone().close() {
            tracing::warn!(%error, "closing the log on drop failed");
        }
        self.fanout.closed_at(self.wal.durable_end());
        self.join_followers();
    }
}
