//! Subscriptions: every durable event from a position, once, in order — for hundreds of
//! subscribers at once.
//!
//! One fan-out thread (`hybridstore-fanout`) follows the durable log (it waits on the log's
//! durable notification, not on a timer), decodes each record once and hands the shared event to
//! every live subscriber. A subscriber that starts behind the fan-out, or falls behind it (its
//! queue is full), reads the log on a catch-up thread of its own until it stands where the
//! fan-out stands, and then joins it again; the log is the buffer, so a slow subscriber never
//! holds up the others and never loses an event.
//!
//! # Invariants
//! - A subscriber joins the live list only under the fan-out's lock, at exactly the fan-out's
//!   next position, so no event is delivered twice or skipped between catch-up and live.
//! - Only durable events are delivered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hybridstore_wal::{Position, Reader, Wal};
use tokio::sync::mpsc;

use super::Store;
use crate::error::{Result, StoreError};
use crate::events::{decode_record, RecordedEvent};

/// Events a subscriber's queue holds before it is sent to catch up from the log.
const QUEUE_EVENTS_MAX: usize = 1024;

/// How long the fan-out waits for new durable records before looking at the shutdown flag.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(100);

type Item = Result<Arc<RecordedEvent>>;

/// A live subscription: durable events in log order, each exactly once.
#[derive(Debug)]
pub struct Subscription {
    receiver: mpsc::Receiver<Item>,
}

impl Subscription {
    /// The next event; waits for it to become durable. `None` once the store has closed.
    pub async fn next(&mut self) -> Option<Result<RecordedEvent>> {
        Some(self.next_shared().await?.map(Arc::unwrap_or_clone))
    }

    /// [`Subscription::next`], sharing the event with the other subscribers instead of copying
    /// it.
    pub async fn next_shared(&mut self) -> Option<Result<Arc<RecordedEvent>>> {
        self.receiver.recv().await
    }
}

/// A subscriber the fan-out feeds.
struct Live {
    /// The first position it has not been handed yet.
    next: Position,
    sender: mpsc::Sender<Item>,
}

#[derive(Default)]
struct State {
    /// The position the fan-out reads next: every event below it has been handed to the live
    /// subscribers that wanted it.
    next: Position,
    live: Vec<Live>,
    /// The fan-out stopped (the store closed, or the log could not be read): new subscribers
    /// only catch up, with nothing to join.
    stopped: bool,
}

/// The fan-out shared by the store and its thread.
pub(super) struct Fanout {
    state: Mutex<State>,
    wal: Wal,
    shutdown: Arc<AtomicBool>,
}

impl Fanout {
    /// A fan-out of `wal` from `from` (the log's end at open).
    pub(super) fn new(wal: Wal, from: Position, shutdown: Arc<AtomicBool>) -> Arc<Fanout> {
        Arc::new(Fanout {
            state: Mutex::new(State {
                next: from,
                ..State::default()
            }),
            wal,
            shutdown,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fan-out thread: hands every durable event to the live subscribers.
    pub(super) fn run(self: Arc<Fanout>) {
        let from = self.state().next;
        let mut reader = match self.wal.reader(from) {
            Ok(reader) => reader,
            Err(error) => return self.stop_with(Some(Err(error.into()))),
        };
        while !self.shutdown.load(Ordering::Relaxed) {
            let first = match reader.next_blocking(SHUTDOWN_CHECK) {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                // A log closed by `close` or drop is the normal end.
                Err(_) if self.shutdown.load(Ordering::Relaxed) => break,
                Err(error) => return self.stop_with(Some(Err(error.into()))),
            };
            let mut records = vec![first];
            while records.len() < QUEUE_EVENTS_MAX {
                match reader.next_record() {
                    Ok(Some(record)) => records.push(record),
                    _ => break,
                }
            }
            let mut events = Vec::with_capacity(records.len());
            let mut failure = None;
            for record in records {
                match decode_record(record.position, &record.data) {
                    Ok(event) => events.push(Arc::new(event)),
                    Err(source) => {
                        failure = Some(StoreError::Decode {
                            position: record.position,
                            source,
                        });
                        break;
                    }
                }
            }
            self.hand_out(&events);
            if let Some(error) = failure {
                return self.stop_with(Some(Err(error)));
            }
        }
        self.stop_with(None);
    }

    /// Hands `events` to every live subscriber; one whose queue is full goes to catch up from
    /// the log, one that hung up is dropped.
    fn hand_out(self: &Arc<Fanout>, events: &[Arc<RecordedEvent>]) {
        let Some(end) = events.last().map(|e| e.position.advance(1)) else {
            return;
        };
        let mut state = self.state();
        let mut behind = Vec::new();
        state.live.retain_mut(|live| {
            let from = live.next;
            for event in events.iter().filter(|e| e.position >= from) {
                match live.sender.try_send(Ok(event.clone())) {
                    Ok(()) => live.next = event.position.advance(1),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        behind.push((live.next, live.sender.clone()));
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
        state.next = end;
        drop(state);
        for (from, sender) in behind {
            self.catch_up(from, sender);
        }
    }

    /// Ends the fan-out: every live subscriber gets `last` (an error), then its end.
    fn stop_with(&self, last: Option<Item>) {
        let mut state = self.state();
        state.stopped = true;
        for live in state.live.drain(..) {
            if let Some(item) = &last {
                let item = match item {
                    Ok(event) => Ok(event.clone()),
                    Err(error) => Err(StoreError::Task(error.to_string())),
                };
                let _ = live.sender.try_send(item);
            }
        }
    }

    /// Feeds `sender` from `from`: live at once if the fan-out stands there, otherwise from the
    /// log on a thread of its own until it does.
    fn subscribe(self: &Arc<Fanout>, from: Position, sender: mpsc::Sender<Item>) -> Result<()> {
        {
            let mut state = self.state();
            if from == state.next && !state.stopped {
                state.live.push(Live { next: from, sender });
                return Ok(());
            }
        }
        // Fail at once for a position the log no longer has.
        let reader = self.wal.reader(from)?;
        self.spawn_catch_up(reader, sender)
    }

    fn catch_up(self: &Arc<Fanout>, from: Position, sender: mpsc::Sender<Item>) {
        let reader = match self.wal.reader(from) {
            Ok(reader) => reader,
            Err(error) => {
                let _ = sender.try_send(Err(error.into()));
                return;
            }
        };
        if let Err(error) = self.spawn_catch_up(reader, sender.clone()) {
            let _ = sender.try_send(Err(error));
        }
    }

    fn spawn_catch_up(
        self: &Arc<Fanout>,
        reader: Reader,
        sender: mpsc::Sender<Item>,
    ) -> Result<()> {
        let fanout = self.clone();
        std::thread::Builder::new()
            .name("hybridstore-catch-up".into())
            .spawn(move || fanout.read_until_live(reader, &sender))
            .map(|_| ())
            .map_err(|e| StoreError::Task(e.to_string()))
    }

    /// A catch-up thread: reads the log into `sender` (waiting when its queue is full) until it
    /// stands where the fan-out stands (or ahead of it), then joins the live subscribers.
    fn read_until_live(&self, mut reader: Reader, sender: &mpsc::Sender<Item>) {
        loop {
            {
                let mut state = self.state();
                if reader.position() >= state.next && !state.stopped {
                    state.live.push(Live {
                        next: reader.position(),
                        sender: sender.clone(),
                    });
                    return;
                }
            }
            if self.shutdown.load(Ordering::Relaxed) || sender.is_closed() {
                return;
            }
            let item = match reader.next_blocking(SHUTDOWN_CHECK) {
                Ok(None) => continue,
                Ok(Some(record)) => decode_record(record.position, &record.data)
                    .map(Arc::new)
                    .map_err(|source| StoreError::Decode {
                        position: record.position,
                        source,
                    }),
                // A log closed by `close` or drop is the normal end.
                Err(_) if self.shutdown.load(Ordering::Relaxed) => return,
                Err(error) => Err(StoreError::Log(error)),
            };
            let failed = item.is_err();
            if sender.blocking_send(item).is_err() || failed {
                return;
            }
        }
    }
}

impl Store {
    /// Follows the durable log from `from`: every event exactly once, in order.
    ///
    /// # Errors
    /// [`StoreError::Log`] if `from` was truncated away.
    pub fn subscribe(&self, from: Position) -> Result<Subscription> {
        let (sender, receiver) = mpsc::channel(QUEUE_EVENTS_MAX);
        self.inner.fanout.subscribe(from, sender)?;
        Ok(Subscription { receiver })
    }
}
