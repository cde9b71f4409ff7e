//! The writer thread: joins queued appends into one log batch, has the last word on duplicates,
//! records the indexes, releases the stream locks and answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use hybridstore_wal::{Position, Wal};

use super::indexes::{self, classify, DedupeKey, Indexes, Recorded};
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

/// What the writer makes of one append of a batch.
enum Verdict {
    /// Not recorded: written in this batch.
    New,
    /// A retry of an append recorded earlier: answered with its result.
    Recorded(AppendResult),
    /// A retry of an earlier append of this batch (by index).
    SameAs(usize),
    /// Recorded only in part, or for another stream.
    Conflict,
}

/// The writer thread: joins every queued append into one log batch (one frame, one `fdatasync`),
/// then records each append in the indexes, releases its stream lock and answers it.
///
/// One round:
/// 1. Take every queued append that fits one log batch ([`gather`]), then the [`WriterRole`].
/// 2. Classify each against the dedupe index and the batch's earlier appends ([`classify_batch`]).
/// 3. Append the new ones' records as one atomic log batch.
/// 4. Record the new appends in the indexes, release the stream locks, answer ([`answer`]); or,
///    if the log failed, fail every append of the batch with the cause ([`fail`]).
///
/// Steps 2–4 are [`process`], which an appender also runs for its own append when it finds the
/// role free (see [`WriterRole`]).
pub(super) fn append_loop(
    wal: &Wal,
    indexes: &Indexes,
    role: &WriterRole,
    requests: &std::sync::mpsc::Receiver<AppendRequest>,
) {
    let bytes_max = wal.options().append_encoded_len_max();
    let mut carried: Option<AppendRequest> = None;
    while let Some(batch) = gather(requests, &mut carried, bytes_max) {
        // Say a batch is waiting first, so that no appender starts writing its own append
        // ahead of it (see `WriterRole`).
        role.batch_waiting.store(true, Ordering::SeqCst);
        let Some(writing) = role.lock() else {
            // A writer panicked half-way: the indexes may not match the log. Stop writing;
            // every append fails from now on (`Closed`), and a reopen rebuilds from the log.
            tracing::error!("a writer panicked; the store refuses appends until it is reopened");
            fail(batch, hybridstore_wal::Error::Closed);
            return;
        };
        role.batch_waiting.store(false, Ordering::SeqCst);
        process(wal, indexes, batch);
        drop(writing);
    }
}

/// Who writes to the log: the writer thread, or an appender writing its own append when no
/// batch is forming (the lighter path: no hand-off to the writer thread and back). Holding the
/// lock is the role: every append is classified, written and recorded by one holder at a time,
/// so the dedupe index stays the one last word on duplicates.
#[derive(Debug, Default)]
pub(super) struct WriterRole {
    lock: Mutex<()>,
    /// The writer thread has gathered a batch and waits for the role: appenders queue behind it.
    batch_waiting: AtomicBool,
}

impl WriterRole {
    /// The role; `None` if a holder panicked (the indexes may then disagree with the log).
    fn lock(&self) -> Option<MutexGuard<'_, ()>> {
        self.lock.lock().ok()
    }

    /// The role, if nobody holds it, no batch waits for it, and no holder panicked.
    pub(super) fn try_take(&self) -> Option<MutexGuard<'_, ()>> {
        if self.batch_waiting.load(Ordering::SeqCst) {
            return None;
        }
        self.lock.try_lock().ok()
    }
}

/// Classifies, writes and answers one batch (the holder of the [`WriterRole`] calls it).
pub(super) fn process(wal: &Wal, indexes: &Indexes, batch: Vec<AppendRequest>) {
    let verdicts = classify_batch(indexes, &batch);
    let records: Vec<&[u8]> = batch
        .iter()
        .zip(&verdicts)
        .filter(|(_, verdict)| matches!(verdict, Verdict::New))
        .flat_map(|(r, _)| r.records.iter().map(Vec::as_slice))
        .collect();
    let appended = if records.is_empty() {
        Ok(None)
    } else {
        wal.append(&records).map(Some)
    };
    match appended {
        Ok(appended) => answer(
            indexes,
            batch,
            verdicts,
            appended.map_or(Position(0), |a| a.first),
        ),
        Err(error) => fail(batch, error),
    }
}

fn request_bytes(request: &AppendRequest) -> u64 {
    request.records.iter().map(|x| x.len() as u64 + 4).sum()
}

/// Step 1: the next batch (waiting for its first append), at most [`WRITER_BATCH_REQUESTS_MAX`]
/// appends and `bytes_max` bytes; an append that does not fit is carried to the next round.
/// `None` once every sender is gone.
fn gather(
    requests: &std::sync::mpsc::Receiver<AppendRequest>,
    carried: &mut Option<AppendRequest>,
    bytes_max: u64,
) -> Option<Vec<AppendRequest>> {
    let first = match carried.take() {
        Some(request) => request,
        None => requests.recv().ok()?,
    };
    let mut bytes = request_bytes(&first);
    let mut batch = vec![first];
    while batch.len() < WRITER_BATCH_REQUESTS_MAX {
        let Ok(next) = requests.try_recv() else { break };
        let next_bytes = request_bytes(&next);
        if bytes + next_bytes > bytes_max {
            *carried = Some(next);
            break;
        }
        bytes += next_bytes;
        batch.push(next);
    }
    Some(batch)
}

/// Step 2. The last word on duplicates is here: only this thread records keys, so two first-time
/// appends with the same event id or idempotency key (even to different streams, which do not
/// share a lock) cannot both be written.
fn classify_batch(indexes: &Indexes, batch: &[AppendRequest]) -> Vec<Verdict> {
    let mut seen: HashMap<DedupeKey, (usize, StreamId), ahash::RandomState> = HashMap::default();
    let mut verdicts = Vec::with_capacity(batch.len());
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
        let verdict = match classify(&request.event_keys, &request.stream, lookup) {
            indexes::Verdict::New => {
                let keys = request.event_keys.iter().flatten().cloned();
                seen.extend(keys.map(|key| (key, (index, request.stream.clone()))));
                Verdict::New
            }
            indexes::Verdict::Duplicate(Ok(original)) => Verdict::Recorded(original),
            indexes::Verdict::Duplicate(Err(earlier)) => Verdict::SameAs(earlier),
            indexes::Verdict::Conflict => Verdict::Conflict,
        };
        verdicts.push(verdict);
    }
    verdicts
}

/// Step 4: records the new appends (their events start at `position`) in the indexes, then
/// releases each stream lock and answers.
fn answer(
    indexes: &Indexes,
    batch: Vec<AppendRequest>,
    verdicts: Vec<Verdict>,
    mut position: Position,
) {
    let mut results: Vec<Option<AppendResult>> = Vec::with_capacity(batch.len());
    for (request, verdict) in batch.into_iter().zip(verdicts) {
        let result = match verdict {
            Verdict::Conflict => Err(InputError::IdempotencyConflict.into()),
            Verdict::Recorded(original) => Ok(original),
            Verdict::SameAs(earlier) => {
                results[earlier].ok_or(StoreError::Input(InputError::IdempotencyConflict))
            }
            Verdict::New => {
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
                    .extend((result.first_position.0..=result.last_position.0).map(Position));
                for key in request.event_keys.into_iter().flatten() {
                    indexes.dedupe.insert(
                        key,
                        Recorded {
                            result,
                            stream: request.stream.clone(),
                        },
                    );
                }
                Ok(result)
            }
        };
        results.push(result.as_ref().ok().copied());
        drop(request.guard);
        let _ = request.reply.send(result);
    }
}

/// Step 4 when the log failed (poisoned or closed): every append of the batch fails with the
/// cause.
fn fail(batch: Vec<AppendRequest>, error: hybridstore_wal::Error) {
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
        let error = first_error
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
