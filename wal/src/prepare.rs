//! The segment preparer: writes the next segment's file ahead of rotation, under a name no
//! segment listing takes ([`PREPARED_SEGMENT_FILE_NAME`]), so that the rotation after it finds a
//! file whose blocks are already written (zeros) instead of preallocated unwritten extents, whose
//! conversion every `fdatasync` touching a new block would otherwise have to commit.
//!
//! Preparing, step by step (each through the [`FileSystem`] seam):
//! 1. create `next.wal.prepared` (0600, fails if it exists);
//! 2. write zeros over the whole segment size, in chunks of [`PREPARE_CHUNK_LEN`];
//! 3. `fdatasync` it (the zeros and the file's length become durable);
//! 4. `fsync` the directory.
//!
//! # Invariants
//! - The preparer only ever touches the prepared file, never the active segment; the writer
//!   touches the prepared file only once it is [`Phase::Ready`] (taken under the state lock),
//!   and the preparer never again after it handed it over. Two writers never share a file region.
//! - A preparation failure is logged and leaves the log as it is: the preparer is not on the
//!   acknowledgement path, so it never poisons the writer; the next rotation falls back to
//!   creating the segment as it always did.
//! - A prepared file is never read as a segment: its name does not parse as a segment id, and a
//!   writable open removes a leftover one before it returns (`Wal::open`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::io::{FileSystem, OpenMode, WalFile};

/// Name of the next segment's file while it is prepared (and until rotation renames it).
pub const PREPARED_SEGMENT_FILE_NAME: &str = "next.wal.prepared";

/// Bytes of zeros written per call while preparing.
const PREPARE_CHUNK_LEN: usize = 1024 * 1024;

/// Where the preparation of the next segment stands.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Nothing prepared or asked for since the last rotation.
    Idle,
    /// The writer asked the background thread to prepare.
    Requested,
    /// The preparer is writing the file; nobody else touches it.
    Preparing,
    /// A prepared file, durable under its temporary name, waiting for the next rotation.
    Ready(Arc<dyn WalFile>),
    /// The last preparation failed (logged); the next rotation falls back, then resets this.
    Failed,
}

#[derive(Debug)]
pub(crate) struct PrepareState {
    pub phase: Phase,
    /// The log is closing: the background thread stops (between chunks) and exits.
    pub stop: bool,
}

/// What the writer and the background preparer share. Deliberately not the log's `Shared`: the
/// thread must not keep the log alive (dropping the last handle closes the log and joins it).
#[derive(Debug)]
pub(crate) struct Preparer {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    segment_size_bytes: u64,
    state: Mutex<PrepareState>,
    cv: Condvar,
    /// The background thread, started at the first request (a log that never passes half a
    /// segment never has one) and joined by [`Preparer::stop_and_join`].
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Preparer {
    pub fn new(fs: Arc<dyn FileSystem>, dir: PathBuf, segment_size_bytes: u64) -> Preparer {
        Preparer {
            fs,
            dir,
            segment_size_bytes,
            state: Mutex::new(PrepareState {
                phase: Phase::Idle,
                stop: false,
            }),
            cv: Condvar::new(),
            thread: Mutex::new(None),
        }
    }

    fn state(&self) -> MutexGuard<'_, PrepareState> {
        crate::wal::lock(&self.state)
    }

    /// The path of the prepared file in `dir`.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(PREPARED_SEGMENT_FILE_NAME)
    }

    /// Called by the writer (holding the active segment's I/O lock) after each write: once the
    /// active segment is past half its size, or at once when the writer wants to leave it
    /// `early` (it is not pre-written), and nothing is prepared or under way, asks for the next
    /// segment. `inline` prepares at once on the calling thread (tests: deterministic).
    pub fn note_written(self: &Arc<Self>, write_offset: u64, early: bool, inline: bool) {
        if !early && write_offset <= self.segment_size_bytes / 2 {
            return;
        }
        let mut state = self.state();
        if !matches!(state.phase, Phase::Idle) || state.stop {
            return;
        }
        if inline {
            state.phase = Phase::Preparing;
            drop(state);
            let outcome = self.prepare(&|| false);
            self.finish(outcome);
        } else {
            state.phase = Phase::Requested;
            drop(state);
            if self.ensure_thread() {
                self.cv.notify_all();
            } else {
                self.finish_failed(&io::Error::other("cannot start the preparer thread"));
            }
        }
    }

    /// Starts the background thread unless it runs; false when it cannot be started.
    fn ensure_thread(self: &Arc<Self>) -> bool {
        let mut thread = crate::wal::lock(&self.thread);
        if thread.is_some() {
            return true;
        }
        let preparer = self.clone();
        match std::thread::Builder::new()
            .name("hybridstore-wal-prepare".into())
            .spawn(move || preparer.run())
        {
            Ok(handle) => {
                *thread = Some(handle);
                true
            }
            Err(error) => {
                tracing::warn!(%error, dir = %self.dir.display(), "cannot start the segment preparer thread");
                false
            }
        }
    }

    fn finish_failed(&self, error: &io::Error) {
        let mut state = self.state();
        tracing::warn!(%error, dir = %self.dir.display(), "preparing the next segment failed; the next rotation creates it instead");
        state.phase = Phase::Failed;
    }

    /// Whether a prepared file is ready for the next rotation.
    pub fn is_ready(&self) -> bool {
        matches!(self.state().phase, Phase::Ready(_))
    }

    /// Called by rotation: the prepared file when one is ready (it is the caller's from now on),
    /// else `None` (still being written, failed, or never asked for). A failed preparation is
    /// forgotten here, so the next segment may ask again once it passes half.
    pub fn take_ready(&self) -> Option<Arc<dyn WalFile>> {
        let mut state = self.state();
        match std::mem::replace(&mut state.phase, Phase::Idle) {
            Phase::Ready(file) => Some(file),
            Phase::Failed | Phase::Idle => None,
            // Under way: the preparer keeps it, and the file serves the rotation after.
            phase @ (Phase::Requested | Phase::Preparing) => {
                state.phase = phase;
                None
            }
        }
    }

    /// Stops the background thread (it exits between chunks) and waits for it: no I/O of the
    /// preparer outlives the log's close.
    pub fn stop_and_join(&self) {
        self.state().stop = true;
        self.cv.notify_all();
        let handle = crate::wal::lock(&self.thread).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// The background thread's loop: waits for a request, prepares, reports, until stopped.
    pub fn run(&self) {
        loop {
            {
                let mut state = self.state();
                while !state.stop && !matches!(state.phase, Phase::Requested) {
                    state = self.cv.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                if state.stop {
                    return;
                }
                state.phase = Phase::Preparing;
            }
            let outcome = self.prepare(&|| self.state().stop);
            self.finish(outcome);
        }
    }

    fn finish(&self, outcome: io::Result<Arc<dyn WalFile>>) {
        let path = Self::path_in(&self.dir);
        let mut state = self.state();
        debug_assert!(matches!(state.phase, Phase::Preparing));
        state.phase = match outcome {
            Ok(file) => {
                tracing::debug!(path = %path.display(), "prepared the next segment");
                Phase::Ready(file)
            }
            Err(error) => {
                if !state.stop {
                    tracing::warn!(%error, path = %path.display(), "preparing the next segment failed; the next rotation creates it instead");
                }
                // Best effort: a partial file left here is removed by the next writable open,
                // and until then the next preparation fails on it (and is logged) harmlessly.
                let _ = self.fs.remove_file(&path);
                Phase::Failed
            }
        };
    }

    /// Steps 1–4 of the module docs. `stopped` is checked between chunks.
    fn prepare(&self, stopped: &dyn Fn() -> bool) -> io::Result<Arc<dyn WalFile>> {
        let path = Self::path_in(&self.dir);
        let file = self.fs.open(&path, OpenMode::CreateNew)?;
        let zeros = vec![0u8; PREPARE_CHUNK_LEN];
        let mut offset = 0u64;
        while offset < self.segment_size_bytes {
            if stopped() {
                return Err(io::Error::other("the log is closing"));
            }
            let len = (self.segment_size_bytes - offset).min(PREPARE_CHUNK_LEN as u64);
            // `len` is at most PREPARE_CHUNK_LEN, the buffer's length.
            file.write_all_at(&zeros[..len as usize], offset)?;
            offset += len;
        }
        file.sync_data()?;
        self.fs.sync_dir(&self.dir)?;
        Ok(file)
    }
}
