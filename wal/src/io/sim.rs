//! A simulated disk for crash and fault-injection tests (feature `testing`).
//!
//! Every file has a *written* image (what reads see) and a *durable* image (what survives a power
//! loss). `sync_data`/`sync_all` copy written to durable; directory entries (creations, removals,
//! renames) become durable only through `sync_dir`. [`SimFs::power_loss`] throws away everything
//! not made durable, optionally tearing the unsynced writes sector by sector, and invalidates every
//! handle opened before it, as a real crash would.
//!
//! Every call counts as one operation; [`SimFs::fail`] makes operation N (or the N-th call of one
//! kind) fail once or from then on, so tests can fail each I/O call site of the engine in turn.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{FileSystem, LockGuard, OpenMode, WalFile};

/// Sector size used when tearing writes.
pub const SECTOR_LEN: usize = 512;

/// What a simulated power loss keeps of writes that were not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tear {
    /// Every unsynced write is lost.
    DropUnsynced,
    /// The unsynced writes of each file are lost except the last one, of which a random subset
    /// of sectors reaches the disk.
    LastWrite,
    /// Each sector of each unsynced write independently reaches the disk or not (a disk that
    /// reorders writes); unsynced length changes are kept or lost at random.
    Sectors,
}

/// Whether an injected fault fires once or on every matching call from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// Only the matching call fails.
    Once,
    /// The matching call and every later call (of any kind) fail: a dead disk.
    Persistent,
}

/// Which call an injected fault matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAt {
    /// The operation with this sequence number (0-based, counted over all calls).
    Op(u64),
    /// The `nth` (0-based) call of the named kind counted from when the fault was set, e.g.
    /// `("allocate", 0)`. Kinds: `create_dir_all`, `list_dir`, `open`, `remove_file`, `rename`,
    /// `sync_dir`, `lock`, `read`, `write`, `sync_data`, `sync_all`, `allocate`, `set_len`,
    /// `len`, `map`.
    Kind(&'static str, u64),
}

#[derive(Debug, Clone)]
struct Fault {
    at: FaultAt,
    mode: FaultMode,
    kind: io::ErrorKind,
    seen_of_kind: u64,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct FileData {
    written: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Pending>,
}

#[derive(Debug, Default)]
struct State {
    next_file_id: u64,
    files: HashMap<u64, FileData>,
    /// Directory entries as reads see them.
    names: HashMap<PathBuf, u64>,
    /// Directory entries as of the last `sync_dir` of their parent.
    durable_names: HashMap<PathBuf, u64>,
    dirs: HashSet<PathBuf>,
    locks: HashSet<PathBuf>,
    generation: u64,
    op_count: u64,
    op_log: Vec<&'static str>,
    faults: Vec<Fault>,
    failed_persistently: Option<io::ErrorKind>,
    rng: Option<StdRng>,
}

/// The simulated disk. Cheap to clone; clones share the disk.
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFs").finish_non_exhaustive()
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

fn stale() -> io::Error {
    io::Error::other("stale handle: opened before a simulated power loss")
}

impl SimFs {
    /// An empty disk.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    /// The disk as a shared [`FileSystem`] handle.
    pub fn shared(&self) -> Arc<dyn FileSystem> {
        Arc::new(self.clone())
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock is a test failure already; keep the state usable so
        // the test can report it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one operation of `kind`, failing it if a fault matches.
    fn op(state: &mut State, kind: &'static str) -> io::Result<()> {
        let number = state.op_count;
        state.op_count += 1;
        state.op_log.push(kind);
        if let Some(error_kind) = state.failed_persistently {
            return Err(io::Error::new(
                error_kind,
                format!("injected persistent fault ({kind})"),
            ));
        }
        let mut fired = None;
        for (index, fault) in state.faults.iter_mut().enumerate() {
            let matches = match &fault.at {
                FaultAt::Op(n) => *n == number,
                FaultAt::Kind(k, nth) => {
                    if *k == kind {
                        fault.seen_of_kind += 1;
                        fault.seen_of_kind - 1 == *nth
                    } else {
                        false
                    }
                }
            };
            if matches {
                fired = Some(index);
                break;
            }
        }
        if let Some(index) = fired {
            let fault = state.faults.remove(index);
            if fault.mode == FaultMode::Persistent {
                state.failed_persistently = Some(fault.kind);
            }
            return Err(io::Error::new(
                fault.kind,
                format!("injected fault at op {number} ({kind})"),
            ));
        }
        Ok(())
    }

    /// Makes a call fail with an error of `kind`, once or from then on.
    pub fn fail(&self, at: FaultAt, mode: FaultMode, kind: io::ErrorKind) {
        self.lock_state().faults.push(Fault {
            at,
            mode,
            kind,
            seen_of_kind: 0,
        });
    }

    /// Removes every pending fault and heals a persistently failed disk.
    pub fn clear_faults(&self) {
        let mut state = self.lock_state();
        state.faults.clear();
        state.failed_persistently = None;
    }

    /// Operations counted so far.
    pub fn op_count(&self) -> u64 {
        self.lock_state().op_count
    }

    /// The kind of every operation counted so far, in order.
    pub fn op_log(&self) -> Vec<&'static str> {
        self.lock_state().op_log.clone()
    }

    /// Seeds the random choices of tearing (default seed 0).
    pub fn seed(&self, seed: u64) {
        self.lock_state().rng = Some(StdRng::seed_from_u64(seed));
    }

    /// Cuts the power: every file reverts to its durable image (plus what `tear` lets through of
    /// unsynced writes), unsynced directory entries vanish, locks are released, and every handle
    /// opened before now fails from then on.
    pub fn power_loss(&self, tear: Tear) {
        let mut guard = self.lock_state();
        let state = &mut *guard;
        let mut rng = state.rng.take().unwrap_or_else(|| StdRng::seed_from_u64(0));
        for data in state.files.values_mut() {
            let mut image = std::mem::take(&mut data.durable);
            let pending = std::mem::take(&mut data.unsynced);
            let last_write = pending
                .iter()
                .rposition(|p| matches!(p, Pending::Write { .. }));
            for (index, op) in pending.into_iter().enumerate() {
                match (tear, op) {
                    (Tear::DropUnsynced, _) => {}
                    (Tear::LastWrite, Pending::Write { offset, data })
                        if Some(index) == last_write =>
                    {
                        apply_sectors(&mut image, offset, &data, &mut rng);
                    }
                    (Tear::LastWrite, _) => {}
                    (Tear::Sectors, Pending::Write { offset, data }) => {
                        apply_sectors(&mut image, offset, &data, &mut rng);
                    }
                    (Tear::Sectors, Pending::SetLen(len)) => {
                        if rng.gen_bool(0.5) {
                            image.resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
                        }
                    }
                }
            }
            data.written = image.clone();
            data.durable = image;
        }
        state.names = state.durable_names.clone();
        let live: HashSet<u64> = state.names.values().copied().collect();
        state.files.retain(|id, _| live.contains(id));
        state.locks.clear();
        state.generation += 1;
        state.rng = Some(rng);
    }

    /// The written image of a file (what a reader would see now), if it exists.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock_state();
        let id = state.names.get(path)?;
        Some(state.files.get(id)?.written.clone())
    }

    /// Overwrites a file's written and durable images (for corruption tests), creating it if
    /// needed, as a durable directory entry.
    pub fn write_file(&self, path: &Path, bytes: &[u8]) {
        let mut state = self.lock_state();
        let id = match state.names.get(path) {
            Some(id) => *id,
            None => {
                let id = state.next_file_id;
                state.next_file_id += 1;
                state.names.insert(path.to_owned(), id);
                state.durable_names.insert(path.to_owned(), id);
                id
            }
        };
        let data = state.files.entry(id).or_default();
        data.written = bytes.to_vec();
        data.durable = bytes.to_vec();
        data.unsynced.clear();
    }

    /// Paths of every file, sorted.
    pub fn list_files(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.lock_state().names.keys().cloned().collect();
        paths.sort();
        paths
    }
}

fn apply_sectors(image: &mut Vec<u8>, offset: u64, data: &[u8], rng: &mut StdRng) {
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    for (index, chunk) in data.chunks(SECTOR_LEN).enumerate() {
        if rng.gen_bool(0.5) {
            let start = offset + index * SECTOR_LEN;
            if image.len() < start + chunk.len() {
                image.resize(start + chunk.len(), 0);
            }
            image[start..start + chunk.len()].copy_from_slice(chunk);
        }
    }
}

#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    id: u64,
    generation: u64,
    writable: bool,
}

#[derive(Debug)]
struct SimLock {
    fs: SimFs,
    path: PathBuf,
    generation: u64,
}

impl LockGuard for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut state = self.fs.lock_state();
        if state.generation == self.generation {
            state.locks.remove(&self.path);
        }
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock_state();
        Self::op(&mut state, "create_dir_all")?;
        state.dirs.insert(path.to_owned());
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut state = self.lock_state();
        Self::op(&mut state, "list_dir")?;
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn WalFile>> {
        let mut state = self.lock_state();
        Self::op(&mut state, "open")?;
        let id = match (mode, state.names.get(path)) {
            (OpenMode::CreateNew, Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    path.display().to_string(),
                ))
            }
            (OpenMode::CreateNew, None) => {
                let parent = path.parent().unwrap_or(Path::new(""));
                if !state.dirs.contains(parent) {
                    return Err(not_found(parent));
                }
                let id = state.next_file_id;
                state.next_file_id += 1;
                state.files.insert(id, FileData::default());
                state.names.insert(path.to_owned(), id);
                id
            }
            (_, Some(id)) => *id,
            (_, None) => return Err(not_found(path)),
        };
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            id,
            generation: state.generation,
            writable: mode != OpenMode::ReadOnly,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock_state();
        Self::op(&mut state, "remove_file")?;
        state
            .names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock_state();
        Self::op(&mut state, "rename")?;
        let id = state.names.remove(from).ok_or_else(|| not_found(from))?;
        state.names.insert(to.to_owned(), id);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock_state();
        Self::op(&mut state, "sync_dir")?;
        state.durable_names.retain(|p, _| p.parent() != Some(dir));
        let entries: Vec<(PathBuf, u64)> = state
            .names
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        state.durable_names.extend(entries);
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn LockGuard>> {
        let mut state = self.lock_state();
        Self::op(&mut state, "lock")?;
        if !state.locks.insert(path.to_owned()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked", path.display()),
            ));
        }
        Ok(Box::new(SimLock {
            fs: self.clone(),
            path: path.to_owned(),
            generation: state.generation,
        }))
    }
}

impl SimFile {
    fn with_data<T>(
        &self,
        kind: &'static str,
        f: impl FnOnce(&mut FileData) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut state = self.fs.lock_state();
        SimFs::op(&mut state, kind)?;
        if state.generation != self.generation {
            return Err(stale());
        }
        let data = state.files.get_mut(&self.id).ok_or_else(stale)?;
        f(data)
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened read-only",
            ))
        }
    }
}

fn to_usize(value: u64) -> io::Result<usize> {
    usize::try_from(value)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

impl WalFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with_data("read", |data| {
            let start = to_usize(offset)?;
            let source = data.written.get(start..start + buf.len()).ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file")
            })?;
            buf.copy_from_slice(source);
            Ok(())
        })
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        self.with_data("write", |data| {
            let start = to_usize(offset)?;
            if data.written.len() < start + buf.len() {
                data.written.resize(start + buf.len(), 0);
            }
            data.written[start..start + buf.len()].copy_from_slice(buf);
            data.unsynced.push(Pending::Write {
                offset,
                data: buf.to_vec(),
            });
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with_data("sync_data", |data| {
            data.durable = data.written.clone();
            data.unsynced.clear();
            Ok(())
        })
    }

    fn sync_all(&self) -> io::Result<()> {
        self.with_data("sync_all", |data| {
            data.durable = data.written.clone();
            data.unsynced.clear();
            Ok(())
        })
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.with_data("allocate", |data| {
            let len = to_usize(len)?;
            if data.written.len() < len {
                data.written.resize(len, 0);
                data.unsynced.push(Pending::SetLen(len as u64));
            }
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.with_data("set_len", |data| {
            data.written.resize(to_usize(len)?, 0);
            data.unsynced.push(Pending::SetLen(len));
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with_data("len", |data| Ok(data.written.len() as u64))
    }

    fn map(&self) -> io::Result<Bytes> {
        self.with_data("map", |data| Ok(Bytes::from(data.written.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves unsynced writes and unsynced directory entries vanish at a power loss.
    #[test]
    fn power_loss_drops_unsynced() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let a = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        a.write_all_at(b"durable", 0).unwrap();
        a.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        a.write_all_at(b"LOST", 0).unwrap();
        let b = fs.open(&dir.join("b"), OpenMode::CreateNew).unwrap();
        b.write_all_at(b"x", 0).unwrap();
        b.sync_data().unwrap();
        fs.power_loss(Tear::DropUnsynced);
        assert_eq!(fs.read_file(&dir.join("a")).unwrap(), b"durable");
        assert!(
            fs.read_file(&dir.join("b")).is_none(),
            "unsynced dir entry must vanish"
        );
        assert!(a.len().is_err(), "handles from before the crash are stale");
    }

    /// Proves an injected fault fires on the chosen call only (once) or on all later calls.
    #[test]
    fn faults_fire_where_asked() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let f = fs.open(Path::new("/d/a"), OpenMode::CreateNew).unwrap();
        fs.fail(
            FaultAt::Kind("sync_data", 1),
            FaultMode::Once,
            io::ErrorKind::Other,
        );
        assert!(f.sync_data().is_ok());
        assert!(f.sync_data().is_err());
        assert!(f.sync_data().is_ok());
        fs.fail(
            FaultAt::Op(fs.op_count()),
            FaultMode::Persistent,
            io::ErrorKind::StorageFull,
        );
        assert_eq!(
            f.write_all_at(b"x", 0).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        assert!(f.len().is_err());
    }
}
