//! The key store's file: two slots, `keys/slot-0` and `keys/slot-1`, each a whole generation of
//! the key store. A new generation goes into the slot not holding the current one (created new,
//! written, fdatasynced, its directory entry fsynced); only then is the old slot overwritten with
//! zeros when it held a key that is now destroyed, removed, and the directory fsynced. At rest
//! one slot exists.
//!
//! ```text
//! 0   8  magic "HSKEYS\0\x01"
//! 8   4  body length, little-endian u32
//! 12  4  CRC-32 (IEEE) of the body
//! 16  …  body: postcard of `Body`
//! ```
//!
//! Opening: a slot that is not a whole, checksummed body is damaged. One valid slot and one
//! damaged: the damaged one is an interrupted write (of a generation no event was acknowledged
//! with: an append waits for the slot's fdatasync) or an interrupted scrub; the valid one is
//! used and the other scrubbed away. Two valid slots: the higher generation is used. One slot,
//! damaged: [`KeyStoreError::Damaged`], naming the file and what is wrong.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hybridstore_wal::io::{FileSystem, OpenMode};
use serde::{Deserialize, Serialize};

use super::KeyStoreError;

const MAGIC: &[u8; 8] = b"HSKEYS\0\x01";
const HEADER_LEN: usize = 16;
/// The body's layout version.
pub(super) const BODY_FORMAT: u8 = 1;
/// Where the key store lives, under the data directory.
pub const KEYS_SUBDIR: &str = "keys";
const SLOTS: [&str; 2] = ["slot-0", "slot-1"];

/// One generation of the key store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Body {
    pub format: u8,
    /// The log the keys belong to (its id, as text).
    pub log_id: String,
    /// Raised by one at every rewrite.
    pub generation: u64,
    /// Present when data keys are wrapped with a master key: a sealed constant, to tell a wrong
    /// master key from a damaged key.
    pub master_check: Option<Wrapped>,
    pub subjects: Vec<SubjectRecord>,
}

/// A subject's keys, by epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SubjectRecord {
    /// The stream whose events the keys seal (`conv-{bot}-{chat}`, `user-{bot}-{user}`).
    pub stream: String,
    /// The epoch new events are sealed with, if any (none after an erasure, until the next).
    pub current: Option<u32>,
    pub epochs: Vec<(u32, EpochRecord)>,
}

/// One key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum EpochRecord {
    /// The key, in the clear (no master key configured).
    Plain(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The key sealed with the master key.
    Wrapped(Wrapped),
    /// Destroyed by the erasure at this log position.
    Destroyed { position: u64 },
}

/// Bytes sealed with the master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Wrapped {
    pub nonce: [u8; super::NONCE_LEN],
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// Which slot holds the current generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot(pub(super) usize);

/// The key store's directory, on the log's file system seam.
#[derive(Debug, Clone)]
pub(super) struct KeyDir {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    /// Test-only: no fdatasync, no directory fsync.
    pub(super) skip_sync: bool,
}

fn damaged(path: &Path, what: impl Into<String>) -> KeyStoreError {
    KeyStoreError::Damaged {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

fn io_error<'a>(path: &'a Path, action: &'static str) -> impl Fn(io::Error) -> KeyStoreError + 'a {
    move |source| KeyStoreError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// Encodes a generation with its header.
pub(super) fn encode(body: &Body) -> Vec<u8> {
    let payload = postcard::to_stdvec(body).expect("a key store body always encodes");
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    bytes
}

/// Decodes a slot's bytes, saying what is wrong if they are not one whole generation.
pub(super) fn decode(path: &Path, bytes: &[u8]) -> Result<Body, KeyStoreError> {
    if bytes.len() < HEADER_LEN {
        return Err(damaged(
            path,
            format!(
                "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            ),
        ));
    }
    if &bytes[..8] != MAGIC {
        return Err(damaged(path, "not a key store file (bad magic)"));
    }
    let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != len {
        return Err(damaged(
            path,
            format!(
                "truncated or extended: the header says {len} body bytes, the file has {}",
                payload.len()
            ),
        ));
    }
    let actual = crc32fast::hash(payload);
    if actual != crc {
        return Err(damaged(
            path,
            format!(
                "checksum mismatch (stored {crc:#010x}, computed {actual:#010x}): a flipped bit?"
            ),
        ));
    }
    let body: Body = crate::events::strict_from_bytes::<Body>(payload)
        .map_err(|e| damaged(path, format!("body does not decode: {e}")))?;
    if body.format != BODY_FORMAT {
        return Err(damaged(
            path,
            format!(
                "body format {} (this build reads {BODY_FORMAT})",
                body.format
            ),
        ));
    }
    Ok(body)
}

impl KeyDir {
    pub(super) fn new(fs: Arc<dyn FileSystem>, data_dir: &Path) -> KeyDir {
        KeyDir {
            fs,
            dir: data_dir.join(KEYS_SUBDIR),
            skip_sync: false,
        }
    }

    fn slot_path(&self, slot: usize) -> PathBuf {
        self.dir.join(SLOTS[slot])
    }

    /// The key store's directory.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, KeyStoreError> {
        let file = match self.fs.open(path, OpenMode::ReadOnly) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(path, "open")(e)),
        };
        let len = file.len().map_err(io_error(path, "stat"))?;
        let mut bytes = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut bytes, 0)
            .map_err(io_error(path, "read"))?;
        Ok(Some(bytes))
    }

    /// Loads the current generation, with the slot holding it and the slots to clean up (a
    /// leftover of an interrupted rewrite). `None`: no key store yet.
    pub(super) fn load(&self) -> Result<Option<(Body, Slot, Vec<usize>)>, KeyStoreError> {
        // A reader beside the writer (a tool beside the daemon) may read a slot that a rewrite
        // then removes, and miss the one it wrote: read again when the directory changed.
        let mut attempts = 0;
        loop {
            let before = self.listing();
            let loaded = self.load_once();
            attempts += 1;
            if self.listing() == before || attempts >= 5 {
                return loaded;
            }
        }
    }

    fn listing(&self) -> Vec<String> {
        let mut names = self.fs.list_dir(&self.dir).unwrap_or_default();
        names.sort();
        names
    }

    fn load_once(&self) -> Result<Option<(Body, Slot, Vec<usize>)>, KeyStoreError> {
        let mut found = Vec::new();
        for slot in 0..SLOTS.len() {
            let path = self.slot_path(slot);
            if let Some(bytes) = self.read(&path)? {
                found.push((slot, decode(&path, &bytes)));
            }
        }
        let valid: Vec<&(usize, Result<Body, KeyStoreError>)> =
            found.iter().filter(|(_, b)| b.is_ok()).collect();
        let best = valid
            .iter()
            .max_by_key(|(_, b)| b.as_ref().map(|b| b.generation).unwrap_or(0));
        match best {
            None => match found.into_iter().next() {
                None => Ok(None),
                Some((_, Err(error))) => Err(error),
                Some((_, Ok(_))) => unreachable!("a valid slot is in `valid`"),
            },
            Some((slot, body)) => {
                let body = body.as_ref().expect("valid").clone();
                let slot = *slot;
                let leftovers = found
                    .iter()
                    .map(|(s, _)| *s)
                    .filter(|s| *s != slot)
                    .collect();
                Ok(Some((body, Slot(slot), leftovers)))
            }
        }
    }

    /// Creates the directory, durably (its entry in the data directory fsynced).
    pub(super) fn create(&self) -> Result<(), KeyStoreError> {
        self.fs
            .create_dir_all(&self.dir)
            .map_err(io_error(&self.dir, "create"))?;
        if let Some(parent) = self.dir.parent() {
            if !self.skip_sync {
                self.fs
                    .sync_dir(parent)
                    .map_err(io_error(parent, "fsync"))?;
            }
        }
        Ok(())
    }

    /// Writes `body` into the slot that does not hold the current generation and makes it
    /// durable: the commit point. Returns the new slot; the old one is the caller's to
    /// [`KeyDir::remove`] (after it has taken the new one as current, so a failure there never
    /// points it at a slot that is gone).
    pub(super) fn write_next(
        &self,
        current: Option<Slot>,
        body: &Body,
    ) -> Result<Slot, KeyStoreError> {
        let target = current.map_or(0, |Slot(s)| 1 - s);
        let path = self.slot_path(target);
        // A leftover of an interrupted rewrite: never the current generation.
        self.remove(target, true)?;
        let bytes = encode(body);
        let file = self
            .fs
            .open(&path, OpenMode::CreateNew)
            .map_err(io_error(&path, "create"))?;
        file.write_all_at(&bytes, 0)
            .map_err(io_error(&path, "write"))?;
        if !self.skip_sync {
            file.sync_data().map_err(io_error(&path, "fdatasync"))?;
        }
        drop(file);
        if !self.skip_sync {
            self.fs
                .sync_dir(&self.dir)
                .map_err(io_error(&self.dir, "fsync"))?;
        }
        Ok(Slot(target))
    }

    /// Removes a slot (scrubbing it with zeros first if asked), durably. Absent: nothing to do.
    pub(super) fn remove(&self, slot: usize, scrub: bool) -> Result<(), KeyStoreError> {
        let path = self.slot_path(slot);
        if scrub {
            match self.fs.open(&path, OpenMode::ReadWrite) {
                Ok(file) => {
                    let len = file.len().map_err(io_error(&path, "stat"))?;
                    let zeros = vec![0; usize::try_from(len).unwrap_or(0)];
                    file.write_all_at(&zeros, 0)
                        .map_err(io_error(&path, "scrub"))?;
                    if !self.skip_sync {
                        file.sync_data().map_err(io_error(&path, "fdatasync"))?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_error(&path, "open")(e)),
            }
        }
        match self.fs.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error(&path, "remove")(e)),
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(io_error(&self.dir, "fsync"))
    }
}
