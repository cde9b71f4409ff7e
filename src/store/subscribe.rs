//! Subscriptions: every durable event from a position, once, in order — for hundreds of
//! subscribers at once.
//!
//! One fan-out thread (`hybridstore-fanout`) follows the durable log (it waits on the log's
//! durable notification, not on a timer), decodes each record once and hands what became
//! durable, shared, to every live subscriber in batches (up to 1024 events): one queue operation
//! per subscriber per batch, not per event. A subscriber that starts behind the fan-out, or falls behind it (its queue is
//! full), is *lagging*: the fan-out skips it, and the subscriber reads the log itself, at its own
//! pace, when it asks for its next event, until it stands where the fan-out stands and rejoins.
//! The log is the buffer: a slow or idle subscriber costs the others nothing and loses nothing.
//! With no live subscriber (none at all, or every one lagging) the fan-out does not read the log
//! either: it parks until one registers or rejoins, then reads on from where that one stands, so
//! a store nobody subscribes to pays no wake-up and no decoding per append for it.
//!
//! # Invariants
//! - A subscriber rejoins only under the fan-out's lock, at or past the fan-out's next position,
//!   and the fan-out hands it only events at or past its own next position: no event is
//!   delivered twice or skipped between catching up and live. While it is parked (no live
//!   subscriber) the fan-out's next position may move forward to where a rejoining subscriber
//!   stands, and it reads on from there: nobody live wanted what it skipped.
//! - Only durable events are delivered.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hybridstore_wal::{Position, Reader, Wal};
use tokio::sync::mpsc;

use super::Store;
use crate::error::{Result, StoreError};
use crate::events::{decode_record, RecordedEvent};

/// Batches a subscriber's queue holds before it lags (and reads the log itself).
const QUEUE_BATCHES_MAX: usize = 64;

/// Most events read into one batch, by the fan-out or by a lagging subscriber.
const BATCH_EVENTS_MAX: usize = 1024;

/// How long a wait for new durable records lasts before looking at the shutdown flag.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(100);

/// How often a subscriber that has read everything looks again while the store is closing and
/// has not published its final end yet (a few milliseconds at most).
const CLOSING_CHECK: Duration = Duration::from_millis(1);

/// Consecutive events, shared by every subscriber they are handed to.
type Events = Arc<[Arc<RecordedEvent>]>;
type Item = Result<Events>;

/// A subscriber as the fan-out knows it.
struct Live {
    id: u64,
    /// The first position it has not been handed yet.
    next: Position,
    sender: mpsc::Sender<Item>,
    /// Its queue was full (or it started behind): the fan-out skips it until it rejoins. Shared
    /// with the subscription, which reads it without the fan-out's lock.
    lagging: Arc<AtomicBool>,
}

impl Live {
    fn lagging(&self) -> bool {
        self.lagging.load(Ordering::Acquire)
    }
}

#[derive(Default)]
struct State {
    /// The position the fan-out reads next: every event below it has been handed to the live
    /// subscribers that wanted it.
    next: Position,
    subscribers: Vec<Live>,
    next_id: u64,
    /// The fan-out stopped (the store closed, or the log could not be read).
    stopped: bool,
    /// The fan-out thread reads nothing until a subscriber is live: none has been since the
    /// store opened, or none is now (it waits for one).
    parked: bool,
}

impl State {
    /// Whether any subscriber takes what the fan-out hands out.
    fn any_live(&self) -> bool {
        self.subscribers.iter().any(|live| !live.lagging())
    }
}

/// The fan-out shared by the store, its thread and the subscriptions.
pub(super) struct Fanout {
    state: Mutex<State>,
    /// Wakes the parked fan-out thread: a subscriber registered or rejoined, or shutdown.
    wake: Condvar,
    /// Events the fan-out thread has decoded (tests: it reads nothing while nobody is live).
    decoded: AtomicU64,
    wal: Wal,
    /// Opens sealed fields.
    keys: Arc<crate::crypto::Keyring>,
    shutdown: Arc<AtomicBool>,
    /// The log's durable end once the store has closed it: a subscription ends when it has
    /// handed out everything below it.
    final_end: Mutex<Option<Position>>,
}

impl Fanout {
    /// A fan-out of `wal` from `from` (the log's end at open).
    pub(super) fn new(
        wal: Wal,
        keys: Arc<crate::crypto::Keyring>,
        from: Position,
        shutdown: Arc<AtomicBool>,
    ) -> Arc<Fanout> {
        Arc::new(Fanout {
            state: Mutex::new(State {
                next: from,
                parked: true,
                ..State::default()
            }),
            wake: Condvar::new(),
            decoded: AtomicU64::new(0),
            wal,
            keys,
            shutdown,
            final_end: Mutex::new(None),
        })
    }

    /// The store has closed the log, whose durable end is `end`.
    pub(super) fn closed_at(&self, end: Position) {
        *self.final_end.lock().unwrap_or_else(|p| p.into_inner()) = Some(end);
    }

    fn final_end(&self) -> Option<Position> {
        *self.final_end.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fan-out thread: hands every durable event to the live subscribers.
    pub(super) fn run(self: Arc<Fanout>) {
        let mut reader_at = self.state().next;
        let mut reader = match self.wal.reader(reader_at) {
            Ok(reader) => reader,
            Err(error) => return self.stop_with(Some(error.into())),
        };
        while !self.shutdown.load(Ordering::Relaxed) {
            // Nobody live: read nothing until a subscriber registers or rejoins.
            let Some(next) = self.wait_for_live() else {
                break;
            };
            if next != reader_at {
                // A subscriber rejoined, while this thread was parked, further on than the
                // reader stands: read on from there.
                reader = match self.wal.reader(next) {
                    Ok(reader) => reader,
                    Err(_) if self.shutdown.load(Ordering::Relaxed) => break,
                    Err(error) => return self.stop_with(Some(error.into())),
                };
                reader_at = next;
            }
            match read_batch(&mut reader, &self.keys) {
                Ok(None) => {}
                Ok(Some(Batch { events, failure })) => {
                    self.decoded
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    reader_at = self.hand_out(&events).unwrap_or(reader_at);
                    if let Some(error) = failure {
                        return self.stop_with(Some(error));
                    }
                }
                Err(_) if self.shutdown.load(Ordering::Relaxed) => break,
                Err(error) => return self.stop_with(Some(error)),
            }
        }
        self.stop_with(None);
    }

    /// Parks while no subscriber is live; returns the fan-out's next position once one is, or
    /// `None` at shutdown.
    fn wait_for_live(&self) -> Option<Position> {
        let mut state = self.state();
        while !state.any_live() {
            if self.shutdown.load(Ordering::Relaxed) {
                return None;
            }
            state.parked = true;
            state = self
                .wake
                .wait_timeout(state, SHUTDOWN_CHECK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.parked = false;
        Some(state.next)
    }

    /// Wakes the fan-out thread if it is parked (under the state lock).
    fn unpark(&self, state: &State) {
        if state.parked {
            self.wake.notify_one();
        }
    }

    /// Stops the fan-out thread's wait at shutdown.
    pub(super) fn shutting_down(&self) {
        let _state = self.state();
        self.wake.notify_all();
    }

    /// Hands `events` to every live subscriber that is not lagging; one whose queue is full
    /// starts lagging, one that hung up is dropped. Returns the position after them (where the
    /// fan-out reads next).
    fn hand_out(&self, events: &[Arc<RecordedEvent>]) -> Option<Position> {
        let (Some(first), Some(end)) = (
            events.first().map(|e| e.position),
            events.last().map(|e| e.position.advance(1)),
        ) else {
            return None;
        };
        let batch: Events = events.into();
        let mut state = self.state();
        state.subscribers.retain_mut(|live| {
            if live.lagging() || live.next >= end {
                return true;
            }
            let events = if live.next <= first {
                batch.clone()
            } else {
                // Rejoined in the middle of the batch: only what it has not seen.
                let skip = usize::try_from(live.next.0 - first.0).unwrap_or(usize::MAX);
                batch.get(skip..).unwrap_or_default().into()
            };
            match live.sender.try_send(Ok(events)) {
                Ok(()) => {
                    live.next = end;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    live.lagging.store(true, Ordering::Release);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        state.next = end;
        Some(end)
    }

    /// Ends the fan-out (the store closed, or the log could not be read: `error`): every
    /// subscriber goes on reading the log itself, so each meets the same end — every durable
    /// event, then the typed error or the end of the store — whatever its queue held.
    fn stop_with(&self, error: Option<StoreError>) {
        if let Some(error) = &error {
            tracing::error!(%error, "the subscription fan-out stopped");
        }
        let mut state = self.state();
        state.stopped = true;
        for live in state.subscribers.drain(..) {
            live.lagging.store(true, Ordering::Release);
        }
    }

    /// Registers a subscriber starting at `from`: live if the fan-out stands there, lagging
    /// (it catches up from the log) otherwise. Returns its id and its lagging flag.
    fn register(&self, from: Position, sender: mpsc::Sender<Item>) -> (u64, Arc<AtomicBool>) {
        let mut state = self.state();
        let id = state.next_id;
        state.next_id += 1;
        let lagging = Arc::new(AtomicBool::new(from != state.next || state.stopped));
        state.subscribers.push(Live {
            id,
            next: from,
            sender,
            lagging: lagging.clone(),
        });
        self.unpark(&state);
        (id, lagging)
    }

    /// Subscriber `id`, which has everything below `next`, rejoins the live ones if the fan-out
    /// stands at or behind `next` and `next` is not past the durable end. Returns whether it did.
    fn rejoin(&self, id: u64, next: Position) -> bool {
        // Past the durable end (it asked for positions not written yet), it waits on the log
        // itself until the log gets there: rejoining there would let it move a parked fan-out
        // past the end, and every later subscriber (below it) could never rejoin.
        if next > self.wal.durable_end() {
            return false;
        }
        let mut state = self.state();
        if state.stopped || next < state.next {
            return false;
        }
        // Parked, the fan-out reads nothing: it reads on from here (see the module's invariants).
        let move_to = (state.parked && !state.any_live()).then_some(next);
        match state.subscribers.iter_mut().find(|live| live.id == id) {
            Some(live) => {
                live.next = next;
                live.lagging.store(false, Ordering::Release);
                if let Some(next) = move_to {
                    state.next = next;
                }
                self.unpark(&state);
                true
            }
            None => false,
        }
    }

    fn unregister(&self, id: u64) {
        self.state().subscribers.retain(|live| live.id != id);
    }
}

/// What one read of the log gave: the events, and the error that stopped it after them.
struct Batch {
    events: Vec<Arc<RecordedEvent>>,
    failure: Option<StoreError>,
}

/// Waits (up to [`SHUTDOWN_CHECK`]) for a durable record, then reads and decodes what is durable
/// after it, up to [`BATCH_EVENTS_MAX`]. `None`: nothing new yet.
fn read_batch(reader: &mut Reader, keys: &crate::crypto::Keyring) -> Result<Option<Batch>> {
    let Some(first) = reader.next_blocking(SHUTDOWN_CHECK)? else {
        return Ok(None);
    };
    let mut records = vec![first];
    while records.len() < BATCH_EVENTS_MAX {
        match reader.next_record() {
            Ok(Some(record)) => records.push(record),
            _ => break,
        }
    }
    let mut events = Vec::with_capacity(records.len());
    for record in records {
        match decode_record(record.position, &record.data, keys) {
            Ok(event) => events.push(Arc::new(event)),
            Err(source) => {
                // The events before the undecodable record are delivered, then the error.
                let failure = StoreError::Decode {
                    position: record.position,
                    source,
                };
                return Ok(Some(Batch {
                    events,
                    failure: Some(failure),
                }));
            }
        }
    }
    Ok(Some(Batch {
        events,
        failure: None,
    }))
}

/// A live subscription: durable events in log order, each exactly once.
pub struct Subscription {
    receiver: mpsc::Receiver<Item>,
    /// The batch being handed out, and the index of its next event.
    current: Option<(Events, usize)>,
    fanout: Arc<Fanout>,
    id: u64,
    /// Set by the fan-out when this subscription's queue was full; cleared when it rejoins.
    lagging: Arc<AtomicBool>,
    /// The position of the next event to hand out.
    next: Position,
    /// While lagging: the reader it catches up with (kept between calls).
    reader: Option<Reader>,
    /// An error ended the subscription.
    ended: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("next", &self.next)
            .field("catching_up", &self.reader.is_some())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next event; waits for it to become durable. `None` once the store has closed and
    /// every event durable by then has been handed out.
    pub async fn next(&mut self) -> Option<Result<RecordedEvent>> {
        Some(self.next_shared().await?.map(Arc::unwrap_or_clone))
    }

    /// [`Subscription::next`], sharing the event with the other subscribers instead of copying
    /// it.
    pub async fn next_shared(&mut self) -> Option<Result<Arc<RecordedEvent>>> {
        loop {
            if let Some((batch, index)) = &mut self.current {
                if let Some(event) = batch.get(*index) {
                    *index += 1;
                    self.next = event.position.advance(1);
                    return Some(Ok(event.clone()));
                }
                self.current = None;
            }
            if self.ended {
                return None;
            }
            // Read the flag before the queue: once lagging, the fan-out queues nothing more, so
            // an empty queue then means everything queued has been handed out.
            let mut lagging = self.reader.is_some() || self.lagging.load(Ordering::Acquire);
            // What the fan-out queued comes first, in order.
            match self.receiver.try_recv() {
                Ok(item) => {
                    if let Some(error) = self.take(item) {
                        return Some(Err(error));
                    }
                    continue;
                }
                // The fan-out stopped (it marks every subscriber lagging first): the rest comes
                // from the log, up to the store's final end or the log's own error.
                Err(mpsc::error::TryRecvError::Disconnected) => lagging = true,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            if lagging {
                match self.catch_up().await {
                    Ok(true) => continue,
                    Ok(false) => match self.fanout.final_end() {
                        // The store closed and everything durable by then has been handed out.
                        Some(end) if self.next >= end => return None,
                        Some(_) => continue,
                        // The store is closing: its final end is published in a moment.
                        None if self.fanout.shutdown.load(Ordering::Relaxed) => {
                            tokio::time::sleep(CLOSING_CHECK).await;
                            continue;
                        }
                        None => continue,
                    },
                    Err(error) => {
                        self.ended = true;
                        return Some(Err(error));
                    }
                }
            }
            // `None`: the fan-out stopped while this subscriber waited; the next round catches
            // up from the log.
            if let Some(item) = self.receiver.recv().await {
                if let Some(error) = self.take(item) {
                    return Some(Err(error));
                }
            }
        }
    }

    /// Takes a queued batch (or the error that ends the subscription).
    fn take(&mut self, item: Item) -> Option<StoreError> {
        match item {
            Ok(batch) => {
                self.current = Some((batch, 0));
                None
            }
            Err(error) => {
                self.ended = true;
                Some(error)
            }
        }
    }

    /// Reads the next events from the log itself (lagging), or rejoins the fan-out once it
    /// stands where the fan-out does. Returns whether it got events (or rejoined); an error
    /// after the store closed is its end (`Ok(false)`).
    async fn catch_up(&mut self) -> Result<bool> {
        // Where the fan-out has not passed this subscriber, it hands it everything from here on:
        // rejoin (cheap; tried before every read, so a laggard under steady appends rejoins as
        // soon as it has caught up).
        if self.fanout.rejoin(self.id, self.next) {
            self.reader = None;
            return Ok(true);
        }
        // A log closed under the reader is the normal end (the caller then looks at the store's
        // final end); any other failure is the subscriber's to see.
        let closed = |error: StoreError| match error {
            StoreError::Log(hybridstore_wal::Error::Closed) => Ok(false),
            other => Err(other),
        };
        let reader = match self.reader.take() {
            Some(reader) => reader,
            None => match self.fanout.wal.reader(self.next) {
                Ok(reader) => reader,
                Err(error) => return closed(error.into()),
            },
        };
        let keys = self.fanout.keys.clone();
        let (reader, batch) = tokio::task::spawn_blocking(move || {
            let mut reader = reader;
            let batch = read_batch(&mut reader, &keys);
            (reader, batch)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?;
        let batch = match batch {
            Ok(batch) => batch,
            Err(error) => return closed(error),
        };
        match batch {
            None => {
                self.reader = Some(reader);
                Ok(false)
            }
            Some(Batch { events, failure }) => {
                self.reader = Some(reader);
                if let Some(error) = failure {
                    if events.is_empty() {
                        return Err(error);
                    }
                    // Hand out the events first; the error comes with the next read.
                    self.reader = None;
                    self.next = events.last().map_or(self.next, |e| e.position.advance(1));
                }
                if !events.is_empty() {
                    self.current = Some((events.into(), 0));
                }
                Ok(true)
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.fanout.unregister(self.id);
    }
}

impl Store {
    /// Events the subscription fan-out has decoded since the store opened (for tests).
    #[doc(hidden)]
    pub fn fanout_decoded_events(&self) -> u64 {
        self.inner.fanout.decoded.load(Ordering::Relaxed)
    }

    /// Follows the durable log from `from`: every event exactly once, in order.
    ///
    /// # Errors
    /// [`StoreError::Log`] if `from` was truncated away.
    pub fn subscribe(&self, from: Position) -> Result<Subscription> {
        // Fail at once for a position the log does not have.
        drop(self.inner.wal.reader(from)?);
        let (sender, receiver) = mpsc::channel(QUEUE_BATCHES_MAX);
        let fanout = self.inner.fanout.clone();
        let (id, lagging) = fanout.register(from, sender);
        Ok(Subscription {
            receiver,
            current: None,
            fanout,
            id,
            lagging,
            next: from,
            reader: None,
            ended: false,
        })
    }
}
