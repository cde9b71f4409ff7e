//! The writer: leader/follower group commit, segment rotation, the interval syncer, poisoning.
//!
//! An append, step by step:
//! 1. Under the queue lock, the appender encodes its records (length-prefixed) onto the shared
//!    pending body, takes the next positions, and notes where its records end.
//! 2. If no leader is writing, it becomes the leader: it takes every pending append (its own and
//!    those that queued behind the previous leader) and releases the queue lock.
//! 3. The leader seals the pending body into **one frame** (header + CRCs), writes it with one
//!    `pwrite`, and — in `always` mode — one `fdatasync`. A group that does not fit in the active
//!    segment is split at append boundaries and the segment is rotated in between.
//! 4. The leader publishes the new durable end to readers, then marks the group acknowledged and
//!    wakes the followers; the next queued appender becomes the next leader.
//!
//! Because a group is one frame and the next write starts only after the previous `fdatasync`
//! returned, in `always` mode at most one frame — the one being written — is ever unsynced.
//!
//! A failed write or sync poisons the writer: the group and every queued append fail, and so does
//! every later append until the log is reopened (after an `EIO` the page cache cannot be trusted;
//! see the fsyncgate discussion of 2018).

use std::sync::Arc;
use std::thread::{self, Thread};

use crate::config::{Durability, PrepareSegments};
use crate::error::{Error, PoisonCause, Result};
use crate::format::{
    align_up, encode_record_into, record_encoded_len, seal_frame, FrameHeader, Position,
    SegmentHeader, SegmentId, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::io::WalFile;
use crate::prepare::Preparer;
use crate::segment::{create_segment, segment_path, Segment, SparseIndex};
use crate::wal::{lock, AppendResult, Shared, Wal};

/// Rounds a leader writes before handing over to a follower: enough to keep the disk busy under
/// load, few enough that the leader's own caller waits a bounded time.
const LEADER_ROUNDS_MAX: usize = 4;

/// How many acknowledged appenders each woken appender wakes in turn.
const WAKE_FAN_OUT: usize = 2;

/// One queued append: where its records end in the pending body and in positions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingAppend {
    pub body_end: usize,
    pub end_position: Position,
}

/// Appends waiting for a leader, and the acknowledgement state followers wait on.
#[derive(Debug)]
pub(crate) struct Queue {
    /// `FRAME_HEADER_LEN` reserved bytes, then the encoded records of the pending appends.
    pub body: Vec<u8>,
    pub appends: Vec<PendingAppend>,
    /// The threads waiting on the pending appends, woken one by one (not with a broadcast: with
    /// dozens of appenders, waking every waiter each round costs more CPU than the appends).
    pub waiters: Vec<Thread>,
    /// Acknowledged appenders still to be woken. The leader wakes one and goes on with the next
    /// round; each woken appender wakes [`WAKE_FAN_OUT`] more, so the wake-ups (a syscall each)
    /// run beside the next round's `fdatasync` instead of before it.
    pub wake_chain: Vec<Thread>,
    /// Position of the first pending record.
    pub pending_first: Position,
    /// Next position to hand out.
    pub next_position: Position,
    pub leader_active: bool,
    /// Every position below this is acknowledged.
    pub acked_end: Position,
    pub poisoned: Option<PoisonCause>,
    pub closed: bool,
    /// A spare buffer the leader hands back, so steady state allocates nothing.
    spare: Vec<u8>,
}

impl Queue {
    pub fn new(end: Position) -> Queue {
        Queue {
            body: Vec::new(),
            appends: Vec::new(),
            waiters: Vec::new(),
            wake_chain: Vec::new(),
            pending_first: end,
            next_position: end,
            leader_active: false,
            acked_end: end,
            poisoned: None,
            closed: false,
            spare: Vec::new(),
        }
    }
}

/// The writer's view of the active segment; locked by the leader for the whole write.
#[derive(Debug)]
pub(crate) struct ActiveIo {
    pub segment: Arc<Segment>,
    /// Offset one past the last written frame.
    pub write_offset: u64,
    /// Position one past the last written record.
    pub written_end: Position,
    /// Offset and position up to which the active segment is known durable.
    pub synced_offset: u64,
    pub synced_end: Position,
    /// Whether every byte past `write_offset` was written (zeros) before this process wrote
    /// there: true for a segment renamed from a prepared file, false for one created by
    /// `fallocate` or reopened (see [`crate::Options::early_switch_after_bytes`]).
    pub prewritten: bool,
    /// `write_offset` when this process took the segment.
    pub taken_at_offset: u64,
}

impl ActiveIo {
    /// The active segment, not pre-written (created by `fallocate`, or reopened).
    pub fn new(segment: Arc<Segment>, offset: u64, end: Position) -> ActiveIo {
        ActiveIo {
            segment,
            write_offset: offset,
            written_end: end,
            synced_offset: offset,
            synced_end: end,
            prewritten: false,
            taken_at_offset: offset,
        }
    }

    /// Whether this segment should be left for a pre-written one as soon as one is ready: it is
    /// not pre-written, this process wrote `after_bytes` into it, and it is at most half full
    /// (past half, the usual preparation for the rotation at the end takes over).
    fn wants_early_switch(&self, after_bytes: u64, segment_size: u64) -> bool {
        !self.prewritten
            && after_bytes > 0
            && self.write_offset - self.taken_at_offset >= after_bytes
            && self.write_offset <= segment_size / 2
    }
}

impl Wal {
    /// Appends `records` as one atomic batch and returns their positions once the batch is
    /// acknowledged (in `always` mode: written and `fdatasync`ed). Blocks the calling thread;
    /// concurrent appenders are group-committed.
    ///
    /// # Errors
    /// [`Error::EmptyAppend`], [`Error::AppendTooLarge`] for bad input (nothing is written);
    /// [`Error::Poisoned`] or [`Error::Closed`] when the writer cannot take appends; the
    /// [`Error::Poisoned`] cause when the batch's own write or sync failed (its records may or
    /// may not be found after reopening, but never partially).
    pub fn append<R: AsRef<[u8]>>(&self, records: &[R]) -> Result<AppendResult> {
        let shared = &*self.shared;
        if records.is_empty() {
            return Err(Error::EmptyAppend);
        }
        let encoded_len: u64 = records
            .iter()
            .map(|r| record_encoded_len(r.as_ref().len()) as u64)
            .sum();
        let encoded_len_max = shared.options.append_encoded_len_max();
        if encoded_len > encoded_len_max {
            return Err(Error::AppendTooLarge {
                encoded_len,
                encoded_len_max,
                segment_size_bytes: shared.options.segment_size_bytes,
            });
        }
        let mut queue = lock(&shared.queue);
        if let Some(cause) = &queue.poisoned {
            return Err(Error::Poisoned {
                cause: cause.clone(),
            });
        }
        if queue.closed {
            return Err(Error::Closed);
        }
        if queue.appends.is_empty() {
            queue.body.clear();
            queue.body.resize(FRAME_HEADER_LEN, 0);
            queue.pending_first = queue.next_position;
        }
        let first = queue.next_position;
        for record in records {
            encode_record_into(record.as_ref(), &mut queue.body);
        }
        let end = first.advance(records.len() as u64);
        queue.next_position = end;
        let body_end = queue.body.len();
        queue.appends.push(PendingAppend {
            body_end,
            end_position: end,
        });
        let me = thread::current();
        queue.waiters.push(me.clone());
        loop {
            if queue.acked_end >= end {
                // Leave the wake chain if this thread saw its acknowledgement before its turn
                // came (a stale entry would swallow a wake-up meant for another appender).
                queue.wake_chain.retain(|t| t.id() != me.id());
                let next: Vec<Thread> = (0..WAKE_FAN_OUT)
                    .filter_map(|_| queue.wake_chain.pop())
                    .collect();
                drop(queue);
                for thread in next {
                    thread.unpark();
                }
                return Ok(AppendResult {
                    first,
                    last: Position(end.0 - 1),
                });
            }
            if let Some(cause) = &queue.poisoned {
                return Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            if !queue.leader_active && !queue.appends.is_empty() {
                queue = shared.lead(queue);
                continue;
            }
            // The leader (or a woken appender, along the wake chain) unparks this thread once
            // its round is acknowledged, or hands leadership to it; an unpark that comes before
            // the park makes the park return at once.
            drop(queue);
            thread::park();
            queue = lock(&shared.queue);
        }
    }
}

impl Shared {
    /// Takes the pending appends, writes them as the leader, and records the outcome. While more
    /// appends queued up during the round, the leader goes on with them (up to
    /// [`LEADER_ROUNDS_MAX`] rounds) instead of handing over: waking a new leader would leave the
    /// disk idle for a scheduling delay between every two rounds.
    fn lead<'a>(
        &'a self,
        mut queue: std::sync::MutexGuard<'a, Queue>,
    ) -> std::sync::MutexGuard<'a, Queue> {
        queue.leader_active = true;
        let me = thread::current().id();
        for _ in 0..LEADER_ROUNDS_MAX {
            let spare = std::mem::take(&mut queue.spare);
            let mut body = std::mem::replace(&mut queue.body, spare);
            let appends = std::mem::take(&mut queue.appends);
            let waiters = std::mem::take(&mut queue.waiters);
            let first = queue.pending_first;
            drop(queue);

            let outcome = self.write_group(&mut body, &appends, first);

            queue = lock(&self.queue);
            body.clear();
            queue.spare = body;
            match outcome {
                Ok(end) => queue.acked_end = end,
                Err(cause) => {
                    tracing::error!(%cause, dir = %self.dir.display(), "log writer poisoned");
                    queue.poisoned = Some(cause);
                    queue.appends.clear();
                }
            }
            let me_too = |t: &Thread| t.id() != me;
            let go_on = queue.poisoned.is_none() && !queue.appends.is_empty();
            let first_to_wake = if queue.poisoned.is_some() {
                // Everyone must learn of the failure: wake them all now.
                let mut all = waiters;
                all.append(&mut queue.waiters);
                all.append(&mut queue.wake_chain);
                drop(queue);
                for waiter in all.iter().filter(|t| me_too(t)) {
                    waiter.unpark();
                }
                None
            } else {
                queue
                    .wake_chain
                    .extend(waiters.into_iter().filter(|t| me_too(t)));
                let first = queue.wake_chain.pop();
                drop(queue);
                first
            };
            if let Some(first) = first_to_wake {
                first.unpark();
            }
            queue = lock(&self.queue);
            if !go_on || queue.appends.is_empty() {
                break;
            }
        }
        queue.leader_active = false;
        // Hand over: the first pending appender (if any) becomes the next leader.
        if let Some(next) = queue.waiters.first() {
            next.unpark();
        }
        // `close` waits on the condition variable for the writer to go idle.
        self.queue_cv.notify_all();
        queue
    }

    /// Writes the group as frames (one, unless it must be split across a rotation), syncs as the
    /// durability mode asks, publishes, and returns the acknowledged end.
    fn write_group(
        &self,
        body: &mut Vec<u8>,
        appends: &[PendingAppend],
        first: Position,
    ) -> Result<Position, PoisonCause> {
        let mut io = lock(&self.io);
        let segment_size = self.options.segment_size_bytes;
        let early_after = self.options.early_switch_after_bytes;
        if io.wants_early_switch(early_after, segment_size)
            && self.preparer.as_ref().is_some_and(|p| p.is_ready())
        {
            // Rotate into the pre-written segment now rather than when this one is full.
            self.rotate(&mut io)?;
        }
        let group_frame_len = align_up(body.len()) as u64;
        if io.write_offset + group_frame_len <= segment_size {
            let record_count = count(
                first,
                appends.last().expect("a group has appends").end_position,
            );
            seal_frame(body, first, record_count);
            self.write_frame(&mut io, body)?;
        } else {
            // Split at append boundaries so each part fits the space left; rotate between parts.
            let mut start = 0;
            let mut part_first = first;
            let mut part_body_start = FRAME_HEADER_LEN;
            while start < appends.len() {
                let room = segment_size - io.write_offset;
                let mut end = start;
                while end < appends.len()
                    && align_up(FRAME_HEADER_LEN + appends[end].body_end - part_body_start) as u64
                        <= room
                {
                    end += 1;
                }
                if end == start {
                    assert!(
                        io.write_offset > SEGMENT_HEADER_LEN as u64,
                        "an append larger than an empty segment passed the size check"
                    );
                    self.rotate(&mut io)?;
                    continue;
                }
                let body_end = appends[end - 1].body_end;
                let mut frame =
                    Vec::with_capacity(FRAME_HEADER_LEN + body_end - part_body_start + 8);
                frame.resize(FRAME_HEADER_LEN, 0);
                frame.extend_from_slice(&body[part_body_start..body_end]);
                let part_end = appends[end - 1].end_position;
                seal_frame(&mut frame, part_first, count(part_first, part_end));
                self.write_frame(&mut io, &frame)?;
                start = end;
                part_first = part_end;
                part_body_start = body_end;
            }
        }
        match self.options.durability {
            Durability::Always => {
                self.sync_active(&mut io)?;
                self.publish_durable(io.synced_end, io.synced_offset, None);
            }
            Durability::Never => {
                self.publish_durable(io.written_end, io.write_offset, None);
            }
            // The syncer thread syncs and publishes.
            Durability::Interval(_) => {}
        }
        if let Some(preparer) = &self.preparer {
            preparer.note_written(
                io.write_offset,
                io.wants_early_switch(early_after, segment_size),
                self.options.prepare == PrepareSegments::Inline,
            );
        }
        Ok(io.written_end)
    }

    fn write_frame(&self, io: &mut ActiveIo, frame: &[u8]) -> Result<(), PoisonCause> {
        let segment = io.segment.clone();
        segment
            .file
            .write_all_at(frame, io.write_offset)
            .map_err(|e| poison("write", &e))?;
        let header =
            FrameHeader::decode_from(frame).expect("the writer's own frame header validates");
        segment.index().note_frame(io.write_offset, &header);
        io.write_offset += frame.len() as u64;
        io.written_end = header.end_position();
        Ok(())
    }

    fn sync_active(&self, io: &mut ActiveIo) -> Result<(), PoisonCause> {
        if io.synced_offset == io.write_offset {
            return Ok(());
        }
        io.segment
            .file
            .sync_data()
            .map_err(|e| poison("fdatasync", &e))?;
        io.synced_offset = io.write_offset;
        io.synced_end = io.written_end;
        Ok(())
    }

    /// Seals the active segment and starts the next one:
    /// 1. `fdatasync` the active segment (its frames become durable);
    /// 2. truncate it to its last frame and `fsync` it (sealed segments have no slack);
    /// 3. when the preparer has the next segment's file ready (zero-filled, durable under
    ///    `next.wal.prepared`): write the header into it, `fdatasync` it, rename it to the
    ///    segment's name, `fsync` the directory; otherwise create the next segment: preallocate,
    ///    write its header, `fsync` it, `fsync` the directory;
    /// 4. publish the new segment list with the sealed segment's records durable.
    fn rotate(&self, io: &mut ActiveIo) -> Result<(), PoisonCause> {
        self.sync_active(io)?;
        let old = io.segment.clone();
        old.file
            .set_len(io.write_offset)
            .map_err(|e| poison("truncate sealed segment", &e))?;
        old.file
            .sync_all()
            .map_err(|e| poison("fsync sealed segment", &e))?;
        let id = SegmentId(io.written_end);
        let prepared = self.preparer.as_ref().and_then(|p| p.take_ready());
        let prewritten = prepared.is_some();
        let segment = match prepared {
            Some(file) => self.rename_prepared(file, id)?,
            None => self.create_next_segment(id)?,
        };
        tracing::debug!(sealed = %old.id, next = %id, prewritten, "rotated segment");
        let mut segments = lock(&self.published).segments.to_vec();
        segments.push(segment.clone());
        *io = ActiveIo::new(segment, SEGMENT_HEADER_LEN as u64, io.written_end);
        io.prewritten = prewritten;
        self.publish_durable(io.written_end, io.write_offset, Some(segments.into()));
        Ok(())
    }

    /// Rotation's step 3 with a prepared file (zeros over the whole segment size, durable):
    /// header, `fdatasync`, rename, directory `fsync`. Once renamed, the file is byte for byte
    /// what `create_segment` makes (header, then zeros to the segment size).
    fn rename_prepared(
        &self,
        file: Arc<dyn WalFile>,
        id: SegmentId,
    ) -> Result<Arc<Segment>, PoisonCause> {
        let header = SegmentHeader {
            first_position: id.first_position(),
        }
        .encode();
        file.write_all_at(&header, 0)
            .map_err(|e| poison("write segment header", &e))?;
        file.sync_data()
            .map_err(|e| poison("fdatasync prepared segment", &e))?;
        let path = segment_path(&self.dir, id);
        self.fs
            .rename(&Preparer::path_in(&self.dir), &path)
            .map_err(|e| poison("rename prepared segment", &e))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| poison("fsync directory", &e))?;
        tracing::debug!(segment = %id, "rotated into the prepared segment");
        Ok(Arc::new(Segment::new(
            id,
            path,
            file,
            SparseIndex::new(id.first_position()),
        )))
    }

    /// Rotation's step 3 without a prepared file: `create_segment`, as before preparation.
    fn create_next_segment(&self, id: SegmentId) -> Result<Arc<Segment>, PoisonCause> {
        create_segment(&*self.fs, &self.dir, id, self.options.segment_size_bytes).map_err(|e| {
            match e {
                Error::Io { op, source, .. } => poison(op, &source),
                other => PoisonCause {
                    op: "create segment",
                    kind: std::io::ErrorKind::Other,
                    message: other.to_string(),
                },
            }
        })
    }

    /// Interval mode: syncs what was written since the last sync and publishes it.
    pub(crate) fn sync_written(&self) {
        let mut io = lock(&self.io);
        if io.synced_offset == io.write_offset {
            return;
        }
        match self.sync_active(&mut io) {
            Ok(()) => self.publish_durable(io.synced_end, io.synced_offset, None),
            Err(cause) => {
                tracing::error!(%cause, dir = %self.dir.display(), "log writer poisoned by the interval sync");
                drop(io);
                let mut queue = lock(&self.queue);
                queue.poisoned = Some(cause);
                queue.appends.clear();
                for waiter in queue.waiters.drain(..) {
                    waiter.unpark();
                }
                drop(queue);
                self.queue_cv.notify_all();
            }
        }
    }
}

fn count(first: Position, end: Position) -> u32 {
    u32::try_from(end.0 - first.0).expect("a frame holds fewer than 2^32 records")
}

fn poison(op: &'static str, error: &std::io::Error) -> PoisonCause {
    PoisonCause {
        op,
        kind: error.kind(),
        message: error.to_string(),
    }
}
