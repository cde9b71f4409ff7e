//! The writer thread: joins queued appends into one log batch, has the last word on duplicates,
//! records the indexes, releases the stream locks and answers.

use std::collections::HashMap;

use hybridstore_wal::{Position, Wal};

use super::indexes::{classify, DedupeKey, Indexes, Recorded, Verdict};
use super::AppendResult;
use crate::error::{InputError, Result, StoreError};
use crate::ids::{StreamId, StreamVersion};

/// One append handed to the writer thread.
pub(super) struct AppendRequest {
    pub(super) records: Vec<Vec<u8>>,
    pub(super) stream: StreamId,
    pub(super) first_version: u64,
    /// Per event, its client-supplied id and idempotency key (as dedupe keys).
    pub(super) event_keys: Vec<Vec<DedupeKey>>,
    /// The stream's lock, released by the writer once the indexes are updated.
    pub(super) guard: tokio::sync::OwnedMutexGuard<()>,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<AppendResult>>,
}

/// Most appends joined into one log batch by the writer thread.
pub(super) const WRITER_BATCH_REQUESTS_MAX: usize = 1024;

/// The writer thread: joins every queued append into one log batch (one frame, one `fdatasync`),
/// then records each append in the indexes, releases its stream lock and answers it.
pub(super) fn append_loop(
    wal: &Wal,
    indexes: &Indexes,
    requests: &std::sync::mpsc::Receiver<AppendRequest>,
) {
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
