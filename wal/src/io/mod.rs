//! The storage seam: every byte the engine reads or writes, and every fsync it issues, goes through
//! [`FileSystem`] and [`WalFile`]. [`StdFs`] is the real file system; `sim` (feature `testing`) is
//! a simulated disk that keeps a "written" and a "durable" image of every file, so tests can cut
//! the power and fail any single call.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

#[cfg(feature = "testing")]
pub mod sim;

/// How [`FileSystem::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create a new file (mode 0600); fail if it exists.
    CreateNew,
    /// Open an existing file for reading and writing.
    ReadWrite,
    /// Open an existing file for reading only.
    ReadOnly,
}

/// A file system as the log engine sees it.
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Creates `path` and its parents; new directories get mode 0700.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of directory `dir` (not full paths), in no particular order.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn WalFile>>;
    /// Removes a file (durable only after [`FileSystem::sync_dir`]).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to` (durable only after [`FileSystem::sync_dir`]).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, removals, renames) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive advisory lock on `path` (created if missing), held until the guard
    /// drops. Fails with [`io::ErrorKind::WouldBlock`] if another holder has it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn LockGuard>>;
}

/// An open file.
pub trait WalFile: Send + Sync + fmt::Debug {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's data (and the metadata needed to read it) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and all metadata durable: `fsync`.
    fn sync_all(&self) -> io::Result<()>;
    /// Reserves disk space so the file is at least `len` bytes long (zero-filled).
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Truncates or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// True when the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// A read-only view of the whole file as it is now. The engine only maps files that no
    /// longer change (sealed segments) or reads below a bound it knows to be written.
    fn map(&self) -> io::Result<Bytes>;
}

/// Holds a lock taken by [`FileSystem::lock`] until dropped.
pub trait LockGuard: Send + Sync + fmt::Debug {}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

impl StdFs {
    /// A shared handle to the real file system.
    pub fn shared() -> Arc<dyn FileSystem> {
        Arc::new(StdFs)
    }
}

#[derive(Debug)]
struct StdFile {
    file: File,
    path: PathBuf,
}

#[derive(Debug)]
struct StdLock {
    _file: File,
}

impl LockGuard for StdLock {}

impl FileSystem for StdFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn WalFile>> {
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::CreateNew => options.read(true).write(true).create_new(true).mode(0o600),
            OpenMode::ReadWrite => options.read(true).write(true),
            OpenMode::ReadOnly => options.read(true),
        };
        let file = options.open(path)?;
        Ok(Arc::new(StdFile {
            file,
            path: path.to_owned(),
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn LockGuard>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(StdLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked", path.display()),
            )),
            Err(fs::TryLockError::Error(error)) => Err(error),
        }
    }
}

impl WalFile for StdFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        if self.len()? >= len {
            return Ok(());
        }
        // fallocate reserves the blocks, so a later write cannot fail with ENOSPC halfway
        // through a frame; file systems without it get a sparse extension instead.
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) => self.file.set_len(len),
            Err(errno) => Err(errno.into()),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn map(&self) -> io::Result<Bytes> {
        if self.len()? == 0 {
            return Ok(Bytes::new());
        }
        // SAFETY: the mapping is read-only, and the engine maps only files whose mapped range
        // does not change while mapped: sealed segments (truncated to their frames and fsynced
        // before they were sealed, never written again) and, during recovery, the last segment
        // while this process holds the directory's writer lock and before any write. Truncating a
        // mapped file would raise SIGBUS on access past the new end; the only truncations are of
        // the active segment by the lock holder, which never maps it while it is active (readers
        // use `pread` there). The directory is 0700 and its files 0600, so another process doing
        // so means the log is being edited by hand while in use, outside the engine's contract.
        // The audit tool reads the last segment by copying it for this reason.
        let map = unsafe { memmap2::Mmap::map(&self.file) }
            .map_err(|e| io::Error::new(e.kind(), format!("mmap {}: {e}", self.path.display())))?;
        Ok(Bytes::from_owner(map))
    }
}
