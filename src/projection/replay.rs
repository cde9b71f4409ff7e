//! The one loop that reads the log into a projection. The store's rebuild at open, the Postgres
//! verification and the replay tool all go through [`replay_log`], so there is one decoder
//! pipeline to get right (and to make fast).

use std::ops::ControlFlow;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use hybridstore_wal::{Position, Wal};

use crate::crypto::Keyring;
use crate::error::{Result, StoreError};
use crate::events::{
    decode_record_cached, decode_record_deferred, open_deferred, DeferredSeal, RecordedEvent,
    StreamCache,
};

/// Decoded events, each with its sealed fields opened or still closed (then opened by the
/// applying thread).
type Chunk = Vec<(RecordedEvent, Option<DeferredSeal>)>;

/// Events decoded per chunk handed from the decoding thread to the applying one.
const CHUNK_EVENTS: usize = 1024;

/// Reads the durable events of `wal` from `from` up to `to` (exclusive; the durable end when
/// `None`), decodes each once (its sealed fields opened with `keys` on the applying thread), and hands them to `apply` in log order. Returns the position after
/// the last event handed over.
///
/// Reading and decoding run on a second thread, a chunk ahead of applying: on a machine with two
/// cores decoding costs about as much as applying, so the pipeline nearly halves a rebuild.
/// `on_decoded` runs on the decoding thread for every event before it is handed over (the store
/// fills its indexes there, so the two threads carry similar loads). `apply` may stop the replay
/// early with [`ControlFlow::Break`].
///
/// # Errors
/// A log error (a damaged segment, `from` outside the log) or [`StoreError::Decode`] naming the
/// position of a record that does not decode; everything before it has been applied.
pub fn replay_log(
    wal: &Wal,
    from: Position,
    to: Option<Position>,
    keys: &Keyring,
    mut on_decoded: impl FnMut(&RecordedEvent) + Send,
    mut apply: impl FnMut(RecordedEvent) -> ControlFlow<()>,
) -> Result<Position> {
    let to = to.unwrap_or_else(|| wal.durable_end());
    if from >= to {
        return Ok(from);
    }
    let mut reader = wal.reader(from)?;
    let (chunks, received) = sync_channel::<Result<Chunk>>(4);
    // Emptied chunks go back to the decoder: a fresh 1024-event buffer per chunk would be fresh
    // pages for the kernel to zero every time.
    let (recycle, recycled) = sync_channel::<Chunk>(8);
    // Chunks sent and not yet taken: how far the applying thread is behind.
    let queued = std::sync::atomic::AtomicUsize::new(0);
    let queued = &queued;
    std::thread::scope(|scope| -> Result<Position> {
        let decoder = scope.spawn(move || {
            decode_chunks(
                &mut reader,
                to,
                (keys, queued),
                &mut on_decoded,
                &chunks,
                &recycled,
            );
        });
        let mut end = from;
        let mut outcome = Ok(());
        'chunks: for chunk in received.iter() {
            queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let mut chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            };
            for (mut event, deferred) in chunk.drain(..) {
                let next = event.position.advance(1);
                // Sealed fields are opened here, on the applying thread: decoding is the
                // pipeline's slower side, and this one has time to spare.
                if let Some(deferred) = deferred {
                    if let Err(source) = open_deferred(&mut event, deferred, keys) {
                        outcome = Err(StoreError::Decode {
                            position: event.position,
                            source,
                        });
                        break 'chunks;
                    }
                }
                if apply(event).is_break() {
                    end = next;
                    break 'chunks;
                }
                end = next;
            }
            let _ = recycle.try_send(chunk);
        }
        // Dropping the receiver stops a decoder that is still ahead (an early stop or an error).
        drop(received);
        decoder
            .join()
            .map_err(|_| StoreError::Task("the replay's decoder thread panicked".into()))?;
        outcome.map(|()| end)
    })
}

/// The decoding side of [`replay_log`]: chunks of decoded events until `to`, an error, or a
/// receiver that hung up.
fn decode_chunks(
    reader: &mut hybridstore_wal::Reader,
    to: Position,
    (keys, queued): (&Keyring, &std::sync::atomic::AtomicUsize),
    on_decoded: &mut (impl FnMut(&RecordedEvent) + Send),
    chunks: &SyncSender<Result<Chunk>>,
    recycled: &Receiver<Chunk>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let send = |item: Result<Chunk>| {
        queued.fetch_add(1, Relaxed);
        chunks.send(item)
    };
    let mut streams = StreamCache::default();
    loop {
        let mut chunk = recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK_EVENTS));
        let mut done = false;
        // Sealed fields are opened by whichever thread has time: here when the applying thread
        // is behind (chunks queue up), there when it waits for this one.
        let open_here = queued.load(Relaxed) >= 2;
        while chunk.len() < CHUNK_EVENTS {
            let record = match reader.next_record() {
                Ok(Some(record)) if record.position < to => record,
                Ok(_) => {
                    done = true;
                    break;
                }
                Err(error) => {
                    let _ = send(Err(error.into()));
                    return;
                }
            };
            let decoded = if open_here {
                decode_record_cached(record.position, &record.data, &mut streams, keys)
                    .map(|event| (event, None))
            } else {
                decode_record_deferred(record.position, &record.data, &mut streams)
            };
            match decoded {
                Ok((event, deferred)) => {
                    on_decoded(&event);
                    chunk.push((event, deferred));
                }
                Err(source) => {
                    if !chunk.is_empty() {
                        let _ = send(Ok(chunk));
                    }
                    let _ = send(Err(StoreError::Decode {
                        position: record.position,
                        source,
                    }));
                    return;
                }
            }
        }
        if !chunk.is_empty() && send(Ok(chunk)).is_err() {
            return;
        }
        if done {
            return;
        }
    }
}

/// The event at `position` of `wal`, if it is durable there.
///
/// # Errors
/// A log error (`position` truncated away, a damaged segment) or [`StoreError::Decode`].
pub fn event_at(wal: &Wal, position: Position, keys: &Keyring) -> Result<Option<RecordedEvent>> {
    if position >= wal.durable_end() {
        return Ok(None);
    }
    let Some(record) = wal.reader(position)?.next_record()? else {
        return Ok(None);
    };
    crate::events::decode_record(record.position, &record.data, keys)
        .map(Some)
        .map_err(|source| StoreError::Decode {
            position: record.position,
            source,
        })
}
