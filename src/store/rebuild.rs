//! The rebuild at open: every durable event of the log into the projection and the indexes.

use hybridstore_wal::{Position, Wal};

use super::indexes::{apply_to_indexes, Indexes};
use super::RebuildStats;
use crate::error::{Result, StoreError};
use crate::events::RecordedEvent;
use crate::projection::Projection;

/// Applies every durable event of `wal` to `projection` (and fills the indexes, if given).
pub(super) fn rebuild(
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
pub(super) const REBUILD_CHUNK_EVENTS: usize = 1024;
