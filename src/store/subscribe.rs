//! Subscriptions: every durable event from a position, once, in order.

use std::sync::atomic::Ordering;
use std::time::Duration;

use hybridstore_wal::Position;
use tokio::sync::mpsc;

use super::Store;
use crate::error::{Result, StoreError};
use crate::events::{decode_record, RecordedEvent};

impl Store {
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
