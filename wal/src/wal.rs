//! The [`Wal`] handle: open (lock, log id, recovery), close (clean-shutdown marker), truncation,
//! and the state shared by the writer and the readers.
//!
//! Recovery at open, in order:
//! 1. Create the directory (0700) and take the writer lock (`LOCK`, exclusive `flock`).
//! 2. Read and check the `log-id` file (`identity`); a damaged one fails the open before anything
//!    changes. When it exists, fsync the directory: an earlier open may have renamed it into
//!    place and failed before its own directory fsync, and no id may be returned that a power
//!    loss could take.
//! 3. Remove a leftover prepared next segment (`prepare::PREPARED_SEGMENT_FILE_NAME`: a crash
//!    while preparing, or one prepared and never used) and fsync the directory; it was never a
//!    segment, so nothing in it is kept. List segments. Check the header of every sealed segment (magic, version, checksum, name);
//!    sealed segments' frames are checked when read, not at open, so opening is O(segments).
//! 4. The last segment: if a valid clean-shutdown marker describes it, take its end and sparse
//!    index from the marker; otherwise scan it (every frame checked) and classify its end
//!    (`recovery::scan_segment`). A torn tail is truncated (logged) or refused (`Strict`);
//!    corruption fails the open.
//! 5. Re-extend the active segment to its preallocated size and fsync it.
//! 6. Remove the marker and fsync the directory, before any append can be acknowledged.
//! 7. When there was no `log-id` (a new log, or one written before log ids), create it durably
//!    (`identity::create_log_id`), so the id is fixed before the open returns it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Durability, Options, PrepareSegments, RecoveryMode};
use crate::error::{CorruptionKind, Error, Result};
use crate::format::{Position, SegmentHeader, SegmentId, SEGMENT_HEADER_LEN};
use crate::identity::{create_log_id, read_log_id, LogId};
use crate::io::{FileSystem, LockGuard, OpenMode};
use crate::marker::{CleanShutdown, MARKER_FILE_NAME, MARKER_TMP_FILE_NAME};
use crate::prepare::Preparer;
use crate::reader::Reader;
use crate::recovery::{scan_segment, ScanOutcome, SegmentRole};
use crate::segment::{
    create_segment, list_segments, segment_path, write_segment_header, Segment, SparseIndex,
};
use crate::writer::{ActiveIo, Queue};

/// Name of the writer lock file inside the log directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// A listener called with the new durable end after records become durable.
pub type DurableListener = Arc<dyn Fn(Position) + Send + Sync>;

/// What readers may see: published by the writer after records become durable.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    /// Segments in position order; the last is the active one.
    pub segments: Arc<[Arc<Segment>]>,
    /// Position one past the last durable record.
    pub durable_end: Position,
    /// Offset one past the last durable frame in the active segment.
    pub durable_offset: u64,
    /// The log is closed; tail readers stop waiting.
    pub closed: bool,
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    /// The log's identity: always known to a writable open, absent from a read-only open of a
    /// log that has never had a writable open since log ids exist.
    pub log_id: Option<LogId>,
    pub fs: Arc<dyn FileSystem>,
    pub options: Options,
    pub queue: Mutex<Queue>,
    pub queue_cv: Condvar,
    pub io: Mutex<ActiveIo>,
    pub published: Mutex<Published>,
    pub published_cv: Condvar,
    pub listeners: Mutex<Vec<DurableListener>>,
    pub syncer: Mutex<Option<JoinHandle<()>>>,
    /// The next segment's preparer (which owns its background thread): `None` for a read-only
    /// log or with [`PrepareSegments::Off`].
    pub preparer: Option<Arc<Preparer>>,
    pub lock: Mutex<Option<Box<dyn LockGuard>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a lock is held is a bug that has already been reported; the protected state
    // is still consistent at every await-free step boundary, so keep going rather than cascade.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A segmented, checksummed, group-committed write-ahead log. Cheap to clone (clones share the
/// log); `Send + Sync`.
#[derive(Clone)]
pub struct Wal {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared.dir)
            .field("log_id", &self.shared.log_id)
            .finish_non_exhaustive()
    }
}

/// The result of an append: the positions its records received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// Position of the first record.
    pub first: Position,
    /// Position of the last record.
    pub last: Position,
}

impl AppendResult {
    /// Position after the last record.
    pub fn end(&self) -> Position {
        self.last.advance(1)
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir`, running recovery. A log without a `log-id` file (a
    /// new one, or one written before log ids) gets its id here, durably, before the open
    /// returns; [`Wal::log_id`] is then always `Some`.
    ///
    /// # Errors
    /// [`Error::Locked`] if another writer holds the directory; [`Error::LogIdCorrupt`] when the
    /// `log-id` file is damaged (it is left as it is); [`Error::Corrupt`] /
    /// [`Error::TornTail`] when recovery finds damage it must not repair; [`Error::Io`] when a
    /// call fails; [`Error::InvalidConfig`] for unusable options.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Wal> {
        options.validate().map_err(Error::InvalidConfig)?;
        let dir = dir.as_ref().to_owned();
        let fs = options.fs.clone();
        fs.create_dir_all(&dir)
            .map_err(|e| Error::io("create directory", &dir, e))?;
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock_guard = take_lock(&*fs, &dir, &lock_path)?;
        // Before recovery changes anything: a damaged id fails the open with the directory as
        // it was.
        let existing_id = read_durable_log_id(&*fs, &dir)?;
        let recovered = recover(&*fs, &dir, &options)?;
        let log_id = match existing_id {
            Some(id) => id,
            None => {
                // After recovery, so that an open failing on a damaged segment adds nothing to
                // the directory.
                let id = create_log_id(&*fs, &dir)?;
                if recovered.created_first_segment {
                    tracing::debug!(log_id = %id, dir = %dir.display(), "created a new log");
                } else {
                    tracing::info!(log_id = %id, dir = %dir.display(), "gave an existing log its first log id");
                }
                id
            }
        };
        let shared = Arc::new(Shared::new(
            dir,
            Some(log_id),
            recovered,
            Some(lock_guard),
            options,
            false,
        ));
        if let Durability::Interval(interval) = shared.options.durability {
            let weak = Arc::downgrade(&shared);
            let handle = std::thread::Builder::new()
                .name("hybridstore-wal-sync".into())
                .spawn(move || syncer_loop(&weak, interval))
                .map_err(|e| Error::io("spawn sync thread", &shared.dir, e))?;
            *lock(&shared.syncer) = Some(handle);
        }
        Ok(Wal { shared })
    }

    /// Opens the log in `dir` for reading only, as it is on disk now: no lock is taken (a writer
    /// may hold the directory meanwhile), nothing is repaired or written, and the log does not
    /// grow while open. Appends fail with [`Error::Closed`].
    ///
    /// The records readable are those of every valid frame at open: a torn tail of the last
    /// segment ends them (without being cut). The open `fdatasync`s the last segment after
    /// scanning it, so every record it returns is durable even beside a live writer whose last
    /// frames were not synced yet.
    ///
    /// The log id is read and checked but never created: a log that has not had a writable open
    /// since log ids exist has none ([`Wal::log_id`] is `None`). When there is one, the open
    /// fsyncs the directory, so the id it returns is durable even if a live writer renamed it
    /// into place an instant ago.
    ///
    /// # Errors
    /// [`Error::LogIdCorrupt`] when the `log-id` file is damaged; [`Error::Corrupt`] where
    /// recovery would report corruption; [`Error::Io`] when a call fails.
    pub fn open_read_only(dir: impl AsRef<Path>, options: Options) -> Result<Wal> {
        let dir = dir.as_ref().to_owned();
        let fs = options.fs.clone();
        let log_id = read_durable_log_id(&*fs, &dir)?;
        let recovered = recover_read_only(&*fs, &dir)?;
        // Closed from the start: appends fail, readers stop at the end found, and dropping it
        // writes no marker.
        let shared = Arc::new(Shared::new(dir, log_id, recovered, None, options, true));
        Ok(Wal { shared })
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &Options {
        &self.shared.options
    }

    /// The log's identity: `Some` after every writable open (the id is durable by then, and no
    /// later open returns another); `None` only from a read-only open of a log that has not had
    /// a writable open since log ids exist.
    pub fn log_id(&self) -> Option<LogId> {
        self.shared.log_id
    }

    /// Why the writer refuses appends, if it does: poisoned by a failed write or sync (until
    /// reopened) or closed. `None`: appends are taken.
    pub fn refusing(&self) -> Option<String> {
        let queue = lock(&self.shared.queue);
        if let Some(cause) = &queue.poisoned {
            return Some(format!("poisoned: {cause}"));
        }
        queue.closed.then(|| "closed".to_owned())
    }

    /// Position one past the last durable record: readers see every record below it.
    pub fn durable_end(&self) -> Position {
        lock(&self.shared.published).durable_end
    }

    /// The first position still held (positions below were removed by [`Wal::truncate_before`]).
    pub fn first_position(&self) -> Position {
        lock(&self.shared.published).segments[0].id.first_position()
    }

    /// The ids of the segments, oldest first; the last is the active one.
    pub fn segment_ids(&self) -> Vec<SegmentId> {
        lock(&self.shared.published)
            .segments
            .iter()
            .map(|s| s.id)
            .collect()
    }

    /// A reader positioned at `from`; it yields durable records only.
    ///
    /// # Errors
    /// [`Error::PositionTruncated`] if `from` was removed by [`Wal::truncate_before`].
    pub fn reader(&self, from: Position) -> Result<Reader> {
        let first = self.first_position();
        if from < first {
            return Err(Error::PositionTruncated {
                requested: from,
                first,
            });
        }
        Ok(Reader::new(self.shared.clone(), from))
    }

    /// Registers `listener`, called (on the thread that made them durable) with the new durable
    /// end every time records become durable. Keep it short: it runs on the commit path.
    pub fn on_durable(&self, listener: DurableListener) {
        lock(&self.shared.listeners).push(listener);
    }

    /// Waits until the durable end passes `position` (or the log closes, or `timeout` passes);
    /// returns the durable end then.
    pub fn wait_durable_beyond(&self, position: Position, timeout: Duration) -> Position {
        self.shared.wait_durable_beyond(position, timeout)
    }

    /// Deletes every sealed segment whose records all lie below `position` (never the active
    /// one), fsyncing the directory. Returns how many segments were deleted.
    ///
    /// # Errors
    /// An I/O error; segments already deleted stay deleted and the directory is still synced
    /// on the next call.
    pub fn truncate_before(&self, position: Position) -> Result<usize> {
        let shared = &self.shared;
        // Holding the writer's I/O lock keeps rotation from changing the segment list meanwhile.
        let _io = lock(&shared.io);
        let segments = lock(&shared.published).segments.clone();
        let mut removable = 0;
        while removable + 1 < segments.len()
            && segments[removable + 1].id.first_position() <= position
        {
            removable += 1;
        }
        if removable == 0 {
            return Ok(0);
        }
        let mut removed = 0;
        let mut failure = None;
        for segment in &segments[..removable] {
            match shared.fs.remove_file(&segment.path) {
                Ok(()) => removed += 1,
                Err(e) => {
                    failure = Some(Error::io("remove segment", &segment.path, e));
                    break;
                }
            }
        }
        {
            let mut published = lock(&shared.published);
            published.segments = segments[removed..].to_vec().into();
        }
        if let Some(error) = failure {
            return Err(error);
        }
        shared
            .fs
            .sync_dir(&shared.dir)
            .map_err(|e| Error::io("fsync directory", &shared.dir, e))?;
        tracing::info!(removed, below = %position, "deleted sealed segments");
        Ok(removed)
    }

    /// Closes the log cleanly: waits for in-flight appends, syncs, truncates the active segment
    /// to its frames and writes the clean-shutdown marker so the next open scans nothing.
    /// Appends made after (through clones) fail with [`Error::Closed`].
    ///
    /// # Errors
    /// An I/O error from the final sync or the marker; the log is then recovered by scanning at
    /// the next open, as after a crash.
    pub fn close(self) -> Result<()> {
        self.shared.close()
    }
}

impl Shared {
    /// The shared state of a log recovered into `recovered`; `closed` for a read-only one.
    fn new(
        dir: PathBuf,
        log_id: Option<LogId>,
        recovered: Recovered,
        lock: Option<Box<dyn LockGuard>>,
        options: Options,
        closed: bool,
    ) -> Shared {
        let active = recovered
            .segments
            .last()
            .cloned()
            .expect("recovery leaves at least one segment");
        let mut queue = Queue::new(recovered.end_position);
        queue.closed = closed;
        let preparer =
            match options.prepare {
                _ if closed => None,
                PrepareSegments::Off => None,
                PrepareSegments::Background | PrepareSegments::Inline => Some(Arc::new(
                    Preparer::new(options.fs.clone(), dir.clone(), options.segment_size_bytes),
                )),
            };
        Shared {
            dir,
            log_id,
            fs: options.fs.clone(),
            queue: Mutex::new(queue),
            queue_cv: Condvar::new(),
            io: Mutex::new(ActiveIo::new(
                active,
                recovered.end_offset,
                recovered.end_position,
            )),
            published: Mutex::new(Published {
                segments: recovered.segments.into(),
                durable_end: recovered.end_position,
                durable_offset: recovered.end_offset,
                closed,
            }),
            published_cv: Condvar::new(),
            listeners: Mutex::new(Vec::new()),
            syncer: Mutex::new(None),
            preparer,
            lock: Mutex::new(lock),
            options,
        }
    }

    pub(crate) fn wait_durable_beyond(&self, position: Position, timeout: Duration) -> Position {
        let deadline = Instant::now() + timeout;
        let mut published = lock(&self.published);
        while published.durable_end <= position && !published.closed {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            published = self
                .published_cv
                .wait_timeout(published, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        published.durable_end
    }

    /// Makes records up to `end` (ending at `offset` of the active segment) visible to readers.
    pub(crate) fn publish_durable(
        &self,
        end: Position,
        offset: u64,
        segments: Option<Arc<[Arc<Segment>]>>,
    ) {
        {
            let mut published = lock(&self.published);
            if let Some(segments) = segments {
                published.segments = segments;
            }
            debug_assert!(end >= published.durable_end);
            published.durable_end = end;
            published.durable_offset = offset;
        }
        self.published_cv.notify_all();
        let listeners = lock(&self.listeners);
        for listener in listeners.iter() {
            listener(end);
        }
    }

    fn close(&self) -> Result<()> {
        {
            let mut queue = lock(&self.queue);
            if queue.closed {
                return Ok(());
            }
            queue.closed = true;
            while queue.leader_active || !queue.appends.is_empty() {
                queue = self.queue_cv.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
        }
        {
            lock(&self.published).closed = true;
            self.published_cv.notify_all();
        }
        if let Some(handle) = lock(&self.syncer).take() {
            // The syncer holds only a weak reference and exits when it sees `closed`.
            let _ = handle.join();
        }
        // Before the lock is released: no I/O of this log may outlive its close. An unused
        // prepared file stays; the next open removes it.
        if let Some(preparer) = &self.preparer {
            preparer.stop_and_join();
        }
        let result = self.write_clean_shutdown();
        lock(&self.lock).take();
        result
    }

    fn write_clean_shutdown(&self) -> Result<()> {
        if lock(&self.queue).poisoned.is_some() {
            return Ok(());
        }
        let io = lock(&self.io);
        let segment = io.segment.clone();
        let file = &segment.file;
        file.sync_data()
            .map_err(|e| Error::io("fdatasync", &segment.path, e))?;
        file.set_len(io.write_offset)
            .map_err(|e| Error::io("truncate active segment", &segment.path, e))?;
        file.sync_all()
            .map_err(|e| Error::io("fsync", &segment.path, e))?;
        self.publish_durable(io.written_end, io.write_offset, None);
        let index = segment.index().clone();
        let marker = CleanShutdown {
            segment: segment.id,
            end_offset: io.write_offset,
            end_position: io.written_end,
            entries: index.entries().to_vec(),
        };
        let tmp = self.dir.join(MARKER_TMP_FILE_NAME);
        let path = self.dir.join(MARKER_FILE_NAME);
        let _ = self.fs.remove_file(&tmp);
        let tmp_file = self
            .fs
            .open(&tmp, OpenMode::CreateNew)
            .map_err(|e| Error::io("create marker", &tmp, e))?;
        tmp_file
            .write_all_at(&marker.encode(), 0)
            .map_err(|e| Error::io("write marker", &tmp, e))?;
        tmp_file
            .sync_all()
            .map_err(|e| Error::io("fsync marker", &tmp, e))?;
        self.fs
            .rename(&tmp, &path)
            .map_err(|e| Error::io("rename marker", &path, e))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("fsync directory", &self.dir, e))?;
        Ok(())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Err(error) = self.close() {
            tracing::warn!(%error, dir = %self.dir.display(), "clean shutdown failed; the next open will scan the active segment");
        }
    }
}

fn syncer_loop(shared: &Weak<Shared>, interval: Duration) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        {
            let published = lock(&shared.published);
            if published.closed {
                return;
            }
            let (published, _) = shared
                .published_cv
                .wait_timeout(published, interval)
                .unwrap_or_else(|p| p.into_inner());
            if published.closed {
                return;
            }
        }
        shared.sync_written();
    }
}

struct Recovered {
    segments: Vec<Arc<Segment>>,
    end_position: Position,
    end_offset: u64,
    /// The directory held no segment: recovery created the first one (a new log).
    created_first_segment: bool,
}

/// How long `open` waits for a lock held by someone else before reporting [`Error::Locked`].
///
/// A lock released by a close in this process can outlive the close for a moment: a child
/// process forked meanwhile holds the lock file's descriptor until its `exec` closes it (it is
/// close-on-exec). A short wait rides that out; a second writer still gets `Locked`.
pub const LOCK_WAIT: Duration = Duration::from_millis(250);

fn take_lock(fs: &dyn FileSystem, dir: &Path, lock_path: &Path) -> Result<Box<dyn LockGuard>> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match fs.lock(lock_path) {
            Ok(guard) => return Ok(guard),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(Error::Locked {
                        dir: dir.to_owned(),
                        lock_path: lock_path.to_owned(),
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(Error::io("lock", lock_path, e)),
        }
    }
}

/// Reads and checks the log id, and when there is one fsyncs the directory so that it is durable
/// before an open returns it: an earlier open may have renamed it into place and then failed (or
/// lost the power) before its directory fsync. The file's bytes were fsynced before that rename.
fn read_durable_log_id(fs: &dyn FileSystem, dir: &Path) -> Result<Option<LogId>> {
    let id = read_log_id(fs, dir)?;
    if id.is_some() {
        fs.sync_dir(dir)
            .map_err(|e| Error::io("fsync directory", dir, e))?;
    }
    Ok(id)
}

/// Reads the clean-shutdown marker: whether the file exists, and its contents if valid.
fn read_marker(fs: &dyn FileSystem, dir: &Path) -> Result<(bool, Option<CleanShutdown>)> {
    let path = dir.join(MARKER_FILE_NAME);
    let file = match fs.open(&path, OpenMode::ReadOnly) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((false, None)),
        Err(e) => return Err(Error::io("open marker", &path, e)),
    };
    let bytes = file.map().map_err(|e| Error::io("read marker", &path, e))?;
    let marker = CleanShutdown::decode(&bytes);
    if marker.is_none() {
        tracing::warn!(path = %path.display(), "ignoring an invalid clean-shutdown marker; scanning the active segment");
    }
    Ok((true, marker))
}

fn recover(fs: &dyn FileSystem, dir: &Path, options: &Options) -> Result<Recovered> {
    remove_prepared_leftover(fs, dir)?;
    let ids = list_segments(fs, dir)?;
    let (marker_present, marker) = read_marker(fs, dir)?;
    let Some((&last_id, sealed_ids)) = ids.split_last() else {
        let segment = create_segment(fs, dir, SegmentId(Position(0)), options.segment_size_bytes)?;
        remove_marker(fs, dir, marker_present)?;
        return Ok(Recovered {
            segments: vec![segment],
            end_position: Position(0),
            end_offset: SEGMENT_HEADER_LEN as u64,
            created_first_segment: true,
        });
    };
    let mut segments = Vec::with_capacity(ids.len());
    for &id in sealed_ids {
        let path = segment_path(dir, id);
        let file = fs
            .open(&path, OpenMode::ReadOnly)
            .map_err(|e| Error::io("open segment", &path, e))?;
        check_segment_header(&*file, &path, id)?;
        segments.push(Arc::new(Segment::new(
            id,
            path,
            file,
            SparseIndex::new(id.first_position()),
        )));
    }
    let path = segment_path(dir, last_id);
    let file = fs
        .open(&path, OpenMode::ReadWrite)
        .map_err(|e| Error::io("open segment", &path, e))?;
    let file_len = file
        .len()
        .map_err(|e| Error::io("stat segment", &path, e))?;
    let from_marker = marker.as_ref().filter(|m| {
        m.segment == last_id
            && m.end_offset <= file_len
            && m.end_offset >= SEGMENT_HEADER_LEN as u64
    });
    let (index, end_offset, end_position) = match from_marker {
        Some(marker) => {
            // A cleanly closed log has no excuse for a bad header: check it even though the
            // marker lets us skip the frames.
            check_segment_header(&*file, &path, last_id)?;
            (
                SparseIndex::from_parts(
                    marker.entries.clone(),
                    marker.end_offset,
                    marker.end_position,
                ),
                marker.end_offset,
                marker.end_position,
            )
        }
        None => scan_last_segment(&*file, &path, last_id, options)?,
    };
    if file_len < options.segment_size_bytes {
        file.allocate(options.segment_size_bytes)
            .map_err(|e| Error::io("preallocate segment", &path, e))?;
        file.sync_all()
            .map_err(|e| Error::io("fsync segment", &path, e))?;
    }
    segments.push(Arc::new(Segment::new(last_id, path, file, index)));
    remove_marker(fs, dir, marker_present)?;
    Ok(Recovered {
        segments,
        end_position,
        end_offset,
        created_first_segment: false,
    })
}

/// Recovery without side effects, for [`Wal::open_read_only`].
fn recover_read_only(fs: &dyn FileSystem, dir: &Path) -> Result<Recovered> {
    let ids = list_segments(fs, dir)?;
    let Some((&last_id, _)) = ids.split_last() else {
        return Err(Error::io(
            "open log read-only",
            dir,
            io::Error::new(io::ErrorKind::NotFound, "no log segments in the directory"),
        ));
    };
    let mut segments = Vec::with_capacity(ids.len());
    let mut end = (SEGMENT_HEADER_LEN as u64, last_id.first_position());
    for &id in &ids {
        let path = segment_path(dir, id);
        let file = fs
            .open(&path, OpenMode::ReadOnly)
            .map_err(|e| Error::io("open segment", &path, e))?;
        let index = if id == last_id {
            let bytes = file.map().map_err(|e| Error::io("mmap", &path, e))?;
            let mut index = SparseIndex::new(id.first_position());
            let scan = scan_segment(&bytes, id, SegmentRole::Last, &mut |frame| {
                index.note_frame(frame.offset, &frame.frame.header);
            });
            drop(bytes);
            // Readers must see durable records only. Frames a live writer has written but not
            // yet synced (its last one; a whole interval in `interval` mode) become durable
            // here: everything scanned above was written before this `fdatasync` began.
            file.sync_data()
                .map_err(|e| Error::io("fdatasync", &path, e))?;
            match scan.outcome {
                ScanOutcome::Corrupt { offset, kind } => {
                    return Err(Error::Corrupt {
                        segment: id,
                        path,
                        offset,
                        kind,
                    })
                }
                ScanOutcome::TornHeader { .. } => {}
                ScanOutcome::Clean | ScanOutcome::TornTail { .. } => {
                    end = (scan.end_offset, scan.end_position);
                }
            }
            index
        } else {
            check_segment_header(&*file, &path, id)?;
            SparseIndex::new(id.first_position())
        };
        segments.push(Arc::new(Segment::new(id, path, file, index)));
    }
    Ok(Recovered {
        segments,
        end_position: end.1,
        end_offset: end.0,
        created_first_segment: false,
    })
}

/// Reads and checks a segment's header against its file name.
fn check_segment_header(file: &dyn crate::io::WalFile, path: &Path, id: SegmentId) -> Result<()> {
    let corrupt = |kind| Error::Corrupt {
        segment: id,
        path: path.to_owned(),
        offset: 0,
        kind,
    };
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    match file.read_exact_at(&mut header, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            let len = file.len().map_err(|e| Error::io("stat segment", path, e))?;
            return Err(corrupt(CorruptionKind::SegmentHeaderTruncated { len }));
        }
        Err(e) => return Err(Error::io("read segment header", path, e)),
    }
    let header = SegmentHeader::decode_from(&header).map_err(corrupt)?;
    if header.first_position != id.first_position() {
        return Err(corrupt(CorruptionKind::SegmentNameMismatch {
            in_header: header.first_position,
            in_name: id.first_position(),
        }));
    }
    Ok(())
}

fn scan_last_segment(
    file: &dyn crate::io::WalFile,
    path: &Path,
    id: SegmentId,
    options: &Options,
) -> Result<(SparseIndex, u64, Position)> {
    let bytes = file.map().map_err(|e| Error::io("mmap", path, e))?;
    let mut index = SparseIndex::new(id.first_position());
    let scan = scan_segment(&bytes, id, SegmentRole::Last, &mut |frame| {
        index.note_frame(frame.offset, &frame.frame.header);
    });
    drop(bytes);
    match scan.outcome {
        ScanOutcome::Clean => Ok((index, scan.end_offset, scan.end_position)),
        ScanOutcome::Corrupt { offset, kind } => Err(Error::Corrupt {
            segment: id,
            path: path.to_owned(),
            offset,
            kind,
        }),
        ScanOutcome::TornTail { offset, kind } => {
            if options.recovery == RecoveryMode::Strict {
                return Err(Error::TornTail {
                    segment: id,
                    path: path.to_owned(),
                    offset,
                    kind,
                });
            }
            tracing::warn!(segment = %id, path = %path.display(), offset, %kind, "truncating torn tail of the last segment");
            file.set_len(offset)
                .map_err(|e| Error::io("truncate torn tail", path, e))?;
            file.allocate(options.segment_size_bytes)
                .map_err(|e| Error::io("preallocate segment", path, e))?;
            file.sync_all()
                .map_err(|e| Error::io("fsync segment", path, e))?;
            Ok((index, scan.end_offset, scan.end_position))
        }
        ScanOutcome::TornHeader { kind } => {
            if options.recovery == RecoveryMode::Strict {
                return Err(Error::TornTail {
                    segment: id,
                    path: path.to_owned(),
                    offset: 0,
                    kind,
                });
            }
            tracing::warn!(segment = %id, path = %path.display(), %kind, "rewriting the torn header of a segment created just before a crash");
            file.set_len(0)
                .map_err(|e| Error::io("truncate torn segment", path, e))?;
            write_segment_header(file, path, id, options.segment_size_bytes)?;
            Ok((
                SparseIndex::new(id.first_position()),
                SEGMENT_HEADER_LEN as u64,
                id.first_position(),
            ))
        }
    }
}

fn remove_marker(fs: &dyn FileSystem, dir: &Path, present: bool) -> Result<()> {
    if !present {
        return Ok(());
    }
    let path = dir.join(MARKER_FILE_NAME);
    fs.remove_file(&path)
        .map_err(|e| Error::io("remove marker", &path, e))?;
    fs.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Removes a prepared next segment left by an earlier writer (a crash while preparing it, or one
/// prepared and never used) and fsyncs the directory, so that no preparation starts beside it
/// and no power loss brings it back. It was never renamed to a segment name, so it holds no
/// record; it is not verified or reused.
fn remove_prepared_leftover(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    let path = Preparer::path_in(dir);
    match fs.remove_file(&path) {
        Ok(()) => {
            tracing::debug!(path = %path.display(), "removed a leftover prepared segment");
            fs.sync_dir(dir)
                .map_err(|e| Error::io("fsync directory", dir, e))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove prepared segment", &path, e)),
    }
}
