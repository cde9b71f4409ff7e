//! Crypto-shredding (design §10): a data key per subject, kept in a key store beside the log;
//! the personal fields of each event on the subject's stream sealed with it
//! (AES-256-GCM, random 96-bit nonces); erasure destroys the key.
//!
//! - A **subject** is the stream its events are on: a chat partner (`conv-{bot}-{chat}`) or a
//!   user (`user-{bot}-{user}`). Its keys are numbered by **epoch**: an erasure destroys every
//!   epoch so far, and events appended afterwards (the person wrote again) get a new one.
//! - The [`Keyring`] is the key store in memory, and its only writer: a new key is in the key
//!   store file, fdatasynced, before any event sealed with it is handed to the log, so no
//!   acknowledged event is ever without its key (`keyfile.rs` has the file's layout).
//! - With a master key ([`MasterKey`]: `HYBRIDSTORE_MASTER_KEY` or `…_FILE`), the data keys are
//!   kept wrapped with it, so a copied data directory alone does not open the texts.
//! - The `wal/` crate knows nothing of this: sealing is part of the event codec
//!   ([`crate::events`]), which every reader decodes through with a keyring.

mod keyfile;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use hybridstore_wal::io::FileSystem;
use hybridstore_wal::LogId;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::{Zeroize, Zeroizing};

pub use keyfile::KEYS_SUBDIR;
use keyfile::{Body, EpochRecord, KeyDir, Slot, SubjectRecord, Wrapped};

/// The environment variable holding the master key (64 hex digits).
pub const MASTER_KEY_ENV: &str = "HYBRIDSTORE_MASTER_KEY";
/// The environment variable naming a file holding the master key (64 hex digits, or 32 bytes).
pub const MASTER_KEY_FILE_ENV: &str = "HYBRIDSTORE_MASTER_KEY_FILE";

const MASTER_CHECK: &[u8] = b"hybridstore key store master key check";

/// Why the key store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// A key store file is damaged (a flipped bit, a truncation, not a key store at all).
    #[error("the key store file {path} is damaged: {what}. It holds the keys of every subject's personal fields: restore it from a backup taken together with the log; without it the sealed texts cannot be read")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The key store belongs to another log.
    #[error("the key store in {path} belongs to log {found}, not to this log ({expected}): it was copied from another data directory")]
    OtherLog {
        /// The key store's directory.
        path: PathBuf,
        /// Its log id.
        found: String,
        /// This log's id.
        expected: String,
    },
    /// The data keys are wrapped and no master key was given.
    #[error("the key store in {path} is protected by a master key: set {MASTER_KEY_ENV} or {MASTER_KEY_FILE_ENV}")]
    MasterKeyRequired {
        /// The key store's directory.
        path: PathBuf,
    },
    /// The master key given is not the one the key store was wrapped with.
    #[error("the master key does not open the key store in {path} (a different key than the one it was written with)")]
    MasterKeyMismatch {
        /// The key store's directory.
        path: PathBuf,
    },
    /// The master key is not 32 bytes.
    #[error("bad master key: {0}")]
    BadMasterKey(String),
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The system's random number generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    /// The key store was opened read-only.
    #[error("the key store is open read-only")]
    ReadOnly,
}

/// A 256-bit AES-256-GCM key: its bytes are wiped from memory when dropped (ring's expanded
/// key schedule is not). Cloning shares it.
#[derive(Clone)]
pub struct DataKey(Arc<KeyInner>);

struct KeyInner {
    bytes: Zeroizing<[u8; 32]>,
    aead: LessSafeKey,
    /// The key wrapped with the master key, made once (each wrap spends a random nonce of the
    /// master key's budget; a rewrite of the key store reuses it).
    wrapped: std::sync::OnceLock<Wrapped>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// Bytes of a nonce (96 bits, random: a key seals at most a subject's events, far below the
/// 2^32 messages per key AES-GCM allows with random nonces).
pub const NONCE_LEN: usize = 12;

impl DataKey {
    fn random() -> Result<DataKey, KeyStoreError> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut key[..]).map_err(|e| KeyStoreError::Random(e.to_string()))?;
        Ok(DataKey::from_array(key))
    }

    fn from_array(bytes: Zeroizing<[u8; 32]>) -> DataKey {
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes[..]).expect("a 32-byte AES-256 key");
        DataKey(Arc::new(KeyInner {
            bytes,
            aead: LessSafeKey::new(unbound),
            wrapped: std::sync::OnceLock::new(),
        }))
    }

    fn from_slice(bytes: &[u8]) -> Option<DataKey> {
        let array: [u8; 32] = bytes.try_into().ok()?;
        Some(DataKey::from_array(Zeroizing::new(array)))
    }

    /// The key's bytes (tests look for them on disk after an erasure).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0.bytes
    }

    /// Seals `plaintext`, bound to `aad`: a fresh random nonce and the ciphertext with its
    /// 16-byte tag.
    pub(crate) fn seal(
        &self,
        plaintext: Vec<u8>,
        aad: &[u8],
    ) -> Result<([u8; NONCE_LEN], Vec<u8>), KeyStoreError> {
        use rand::RngCore as _;
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut buffer = plaintext;
        self.0
            .aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buffer,
            )
            .map_err(|_| KeyStoreError::Random("sealing failed".into()))?;
        Ok((nonce, buffer))
    }

    /// Opens what [`DataKey::seal`] sealed; `None` if it was not sealed with this key and `aad`.
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        ciphertext: Vec<u8>,
        aad: &[u8],
    ) -> Option<Vec<u8>> {
        let mut buffer = ciphertext;
        let len = self
            .0
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                &mut buffer,
            )
            .ok()?
            .len();
        buffer.truncate(len);
        Some(buffer)
    }
}

/// The master key that wraps the data keys.
#[derive(Clone)]
pub struct MasterKey(DataKey);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A master key from 64 hex digits (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`KeyStoreError::BadMasterKey`] if it is not 32 bytes of hex.
    pub fn from_hex(text: &str) -> Result<MasterKey, KeyStoreError> {
        let mut bytes = Zeroizing::new(
            hex::decode(text.trim())
                .map_err(|e| KeyStoreError::BadMasterKey(format!("not hex: {e}")))?,
        );
        let key = DataKey::from_slice(&bytes).ok_or_else(|| {
            KeyStoreError::BadMasterKey(format!("{} bytes, not 32 (64 hex digits)", bytes.len()))
        })?;
        bytes.zeroize();
        Ok(MasterKey(key))
    }

    /// A master key from a file: 64 hex digits, or exactly 32 raw bytes.
    ///
    /// # Errors
    /// [`KeyStoreError::Io`] or [`KeyStoreError::BadMasterKey`].
    pub fn from_file(path: &Path) -> Result<MasterKey, KeyStoreError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyStoreError::Io {
            path: path.to_path_buf(),
            action: "read",
            source,
        })?);
        if bytes.len() == 32 {
            return Ok(MasterKey(DataKey::from_slice(&bytes).expect("32 bytes")));
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            KeyStoreError::BadMasterKey(format!(
                "{} holds neither 32 bytes nor 64 hex digits",
                path.display()
            ))
        })?;
        MasterKey::from_hex(text)
    }

    /// The master key the environment names ([`MASTER_KEY_ENV`], else [`MASTER_KEY_FILE_ENV`]),
    /// if any.
    ///
    /// # Errors
    /// As [`MasterKey::from_hex`] and [`MasterKey::from_file`].
    pub fn from_env() -> Result<Option<MasterKey>, KeyStoreError> {
        if let Ok(text) = std::env::var(MASTER_KEY_ENV) {
            return MasterKey::from_hex(&text).map(Some);
        }
        if let Some(path) = std::env::var_os(MASTER_KEY_FILE_ENV) {
            return MasterKey::from_file(Path::new(&path)).map(Some);
        }
        Ok(None)
    }

    /// A random master key (for tests and `hybridstore keygen`-like uses), as 64 hex digits.
    ///
    /// # Errors
    /// [`KeyStoreError::Random`].
    pub fn generate_hex() -> Result<String, KeyStoreError> {
        Ok(hex::encode(DataKey::random()?.bytes()))
    }

    fn wrap(&self, plaintext: &[u8], aad: &[u8]) -> Result<Wrapped, KeyStoreError> {
        let (nonce, ciphertext) = self.0.seal(plaintext.to_vec(), aad)?;
        Ok(Wrapped { nonce, ciphertext })
    }

    fn unwrap(&self, wrapped: &Wrapped, aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        self.0
            .open(&wrapped.nonce, wrapped.ciphertext.clone(), aad)
            .map(Zeroizing::new)
    }
}

/// What the keyring knows of a subject's key at an epoch.
#[derive(Debug, Clone)]
pub enum KeyLookup {
    /// The key.
    Live(DataKey),
    /// Destroyed by the erasure at this position.
    Destroyed {
        /// The erasure event's position.
        position: u64,
    },
    /// The keyring has no such key: a damaged or missing key store (or a keyring without keys,
    /// such as a tool run without the key store).
    Unknown,
}

#[derive(Debug, Clone, Default)]
struct SubjectKeys {
    current: Option<u32>,
    epochs: BTreeMap<u32, Epoch>,
}

#[derive(Debug, Clone)]
enum Epoch {
    Live(DataKey),
    Destroyed { position: u64 },
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    subjects: HashMap<String, SubjectKeys, ahash::RandomState>,
    /// The slot holding the current generation.
    slot: Option<Slot>,
}

/// A subject's key state, for the audit and for receipts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SubjectKeyState {
    /// Live epochs.
    pub live: Vec<u32>,
    /// Destroyed epochs, with the erasure's position.
    pub destroyed: Vec<(u32, u64)>,
    /// The epoch new events are sealed with.
    pub current: Option<u32>,
}

/// The key store in memory and its only writer (one per data directory: the store's lock on the
/// log's directory covers it).
#[derive(Debug)]
pub struct Keyring {
    state: RwLock<State>,
    /// Serializes rewrites (`None`: read-only or keyless).
    dir: Option<Mutex<KeyDir>>,
    /// Where the key store is (for messages), if anywhere.
    path: Option<PathBuf>,
    log_id: String,
    master: Option<MasterKey>,
    /// A key it does not hold is an error, not a locked field.
    strict: bool,
    /// Subjects whose appenders wait for a key (the next rewrite makes them all).
    waiting: Mutex<std::collections::BTreeSet<String>>,
}

/// Scrubs and removes the slot that is not `current`, if it exists.
fn dir_remove_leftover(dir: &KeyDir, current: usize) -> Result<(), KeyStoreError> {
    dir.remove(1 - current, true)
}

fn wrap_aad(log_id: &str, stream: &str, epoch: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(log_id.len() + stream.len() + 6);
    aad.extend_from_slice(log_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(stream.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&epoch.to_le_bytes());
    aad
}

impl Keyring {
    /// A keyring that holds no key: decoding through it shows every sealed field as locked (a
    /// tool looking at segments without their key store).
    pub fn keyless() -> Keyring {
        Keyring {
            state: RwLock::new(State::default()),
            dir: None,
            path: None,
            log_id: String::new(),
            master: None,
            strict: false,
            waiting: Mutex::default(),
        }
    }

    /// Test-only: rewrites skip their fsyncs (see `StoreConfig::key_store_skips_sync_for_tests`).
    #[doc(hidden)]
    pub fn skip_sync_for_tests(&mut self) {
        if let Some(dir) = &mut self.dir {
            dir.get_mut().unwrap_or_else(|p| p.into_inner()).skip_sync = true;
        }
    }

    /// Whether a key this keyring does not hold is an error (the store's keyring: every sealed
    /// event's key is durable before the event is) rather than a locked field (a tool's).
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    /// Opens the key store of the log `log_id` in `data_dir` for writing (created empty if
    /// absent), finishing an interrupted rewrite, and wrapping the keys with `master` if it is
    /// given and they are not wrapped yet.
    ///
    /// # Errors
    /// A [`KeyStoreError`] naming the file and what is wrong.
    pub fn open(
        fs: Arc<dyn FileSystem>,
        data_dir: &Path,
        log_id: LogId,
        master: Option<MasterKey>,
    ) -> Result<Keyring, KeyStoreError> {
        Keyring::load(fs, data_dir, &log_id.to_string(), master, true, true)
    }

    /// Opens the key store in `data_dir` read-only (a tool's view). No key store: a keyring
    /// without keys. `log_id`: refuse a key store of another log. `strict`: a sealed event
    /// whose key it does not hold fails to decode (what a rebuild needs: never project blanks
    /// for texts it could not open); otherwise its fields show as locked (what a dump needs).
    ///
    /// # Errors
    /// As [`Keyring::open`].
    pub fn open_read_only(
        fs: Arc<dyn FileSystem>,
        data_dir: &Path,
        log_id: Option<LogId>,
        master: Option<MasterKey>,
        strict: bool,
    ) -> Result<Keyring, KeyStoreError> {
        let log_id = log_id.map(|id| id.to_string()).unwrap_or_default();
        Keyring::load(fs, data_dir, &log_id, master, false, strict)
    }

    /// [`Keyring::open_read_only`] on the real file system, with the master key from the
    /// environment (what the tools use).
    ///
    /// # Errors
    /// As [`Keyring::open`].
    pub fn for_tool(
        data_dir: &Path,
        log_id: Option<LogId>,
        strict: bool,
    ) -> Result<Keyring, KeyStoreError> {
        Keyring::open_read_only(
            hybridstore_wal::io::StdFs::shared(),
            data_dir,
            log_id,
            MasterKey::from_env()?,
            strict,
        )
    }

    fn load(
        fs: Arc<dyn FileSystem>,
        data_dir: &Path,
        log_id: &str,
        master: Option<MasterKey>,
        writable: bool,
        strict: bool,
    ) -> Result<Keyring, KeyStoreError> {
        let dir = KeyDir::new(fs, data_dir);
        let path = dir.dir().to_path_buf();
        if writable {
            dir.create()?;
        }
        let mut state = State::default();
        let loaded = dir.load()?;
        let mut rewrite = false;
        let mut wrapped_on_disk = false;
        let mut log_id = log_id.to_owned();
        if let Some((body, slot, leftovers)) = loaded {
            if !log_id.is_empty() && body.log_id != log_id {
                return Err(KeyStoreError::OtherLog {
                    path,
                    found: body.log_id,
                    expected: log_id,
                });
            }
            log_id.clone_from(&body.log_id);
            if let Some(check) = &body.master_check {
                wrapped_on_disk = true;
                let Some(master) = &master else {
                    return Err(KeyStoreError::MasterKeyRequired { path });
                };
                if master
                    .unwrap(check, log_id.as_bytes())
                    .as_deref()
                    .map(Vec::as_slice)
                    != Some(MASTER_CHECK)
                {
                    return Err(KeyStoreError::MasterKeyMismatch { path });
                }
            }
            for subject in &body.subjects {
                let mut keys = SubjectKeys {
                    current: subject.current,
                    epochs: BTreeMap::new(),
                };
                for (epoch, record) in &subject.epochs {
                    let epoch_state = match record {
                        EpochRecord::Plain(bytes) => {
                            Epoch::Live(DataKey::from_slice(bytes).ok_or_else(|| {
                                KeyStoreError::Damaged {
                                    path: path.clone(),
                                    what: format!(
                                        "key {epoch} of {} is {} bytes, not 32",
                                        subject.stream,
                                        bytes.len()
                                    ),
                                }
                            })?)
                        }
                        EpochRecord::Wrapped(wrapped) => {
                            let master = master.as_ref().ok_or_else(|| {
                                KeyStoreError::MasterKeyRequired { path: path.clone() }
                            })?;
                            let aad = wrap_aad(&log_id, &subject.stream, *epoch);
                            let bytes = master.unwrap(wrapped, &aad).ok_or_else(|| {
                                KeyStoreError::Damaged {
                                    path: path.clone(),
                                    what: format!(
                                        "key {epoch} of {} does not unwrap with the master key",
                                        subject.stream
                                    ),
                                }
                            })?;
                            let key = DataKey::from_slice(&bytes).ok_or_else(|| {
                                KeyStoreError::Damaged {
                                    path: path.clone(),
                                    what: format!(
                                        "key {epoch} of {} is not 32 bytes",
                                        subject.stream
                                    ),
                                }
                            })?;
                            let _ = key.0.wrapped.set(wrapped.clone());
                            Epoch::Live(key)
                        }
                        EpochRecord::Destroyed { position } => Epoch::Destroyed {
                            position: *position,
                        },
                    };
                    keys.epochs.insert(*epoch, epoch_state);
                }
                state.subjects.insert(subject.stream.clone(), keys);
            }
            state.generation = body.generation;
            state.slot = Some(slot);
            if writable {
                for leftover in leftovers {
                    // Scrubbed: it may be the old generation of an interrupted erasure.
                    dir.remove(leftover, true)?;
                }
            }
            rewrite = master.is_some() && !wrapped_on_disk;
        }
        let keyring = Keyring {
            state: RwLock::new(state),
            dir: writable.then(|| Mutex::new(dir)),
            path: Some(path),
            log_id,
            master,
            strict,
            waiting: Mutex::default(),
        };
        if rewrite && writable {
            // A master key configured for a key store written without one: wrap every key now,
            // and scrub the unwrapped copy.
            keyring.rewrite()?;
            tracing::info!("wrapped the key store's keys with the master key");
        }
        Ok(keyring)
    }

    /// The key store's current generation (raised at every rewrite; 0: never written).
    pub fn generation(&self) -> u64 {
        self.read_state().generation
    }

    /// Where the key store lives.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of `stream` at `epoch`.
    pub fn lookup(&self, stream: &str, epoch: u32) -> KeyLookup {
        match self
            .read_state()
            .subjects
            .get(stream)
            .and_then(|s| s.epochs.get(&epoch))
        {
            Some(Epoch::Live(key)) => KeyLookup::Live(key.clone()),
            Some(Epoch::Destroyed { position }) => KeyLookup::Destroyed {
                position: *position,
            },
            None => KeyLookup::Unknown,
        }
    }

    /// The epoch and key new events of `stream` are sealed with, if it has one already (no
    /// I/O).
    pub fn current(&self, stream: &str) -> Option<(u32, DataKey)> {
        let state = self.read_state();
        let subject = state.subjects.get(stream)?;
        let epoch = subject.current?;
        match subject.epochs.get(&epoch)? {
            Epoch::Live(key) => Some((epoch, key.clone())),
            Epoch::Destroyed { .. } => None,
        }
    }

    /// The epoch and key new events of `stream` are sealed with, creating a key (durably: the
    /// key store is rewritten and fdatasynced before this returns) if it has none. Blocking I/O
    /// when it creates one.
    ///
    /// # Errors
    /// A [`KeyStoreError`]: the key store could not be written (nothing may be sealed then).
    pub fn current_or_create(&self, stream: &str) -> Result<(u32, DataKey), KeyStoreError> {
        if let Some(found) = self.current(stream) {
            return Ok(found);
        }
        let Some(dir) = &self.dir else {
            return Err(KeyStoreError::ReadOnly);
        };
        // Group commit: whoever holds the writer's lock makes the keys of every subject waiting
        // for one, in one rewrite (a burst of new chats is one rewrite, not one each).
        self.waiting_for_keys().insert(stream.to_owned());
        let writer = dir.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = self.current(stream) {
            self.waiting_for_keys().remove(stream);
            return Ok(found);
        }
        let mut batch = std::mem::take(&mut *self.waiting_for_keys());
        batch.insert(stream.to_owned());
        let batch: Vec<String> = batch.into_iter().collect();
        self.create_locked(&writer, &batch)?;
        self.current(stream).ok_or_else(|| KeyStoreError::Damaged {
            path: self.path.clone().unwrap_or_default(),
            what: format!("the key of {stream} was written but is not in memory (a bug)"),
        })
    }

    fn waiting_for_keys(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a key for each of `streams` that has none, in one rewrite of the key store (an
    /// import of many chats: one rewrite per new subject would rewrite the whole key store each
    /// time). Returns how many keys it made. Blocking I/O.
    ///
    /// # Errors
    /// A [`KeyStoreError`]: the key store could not be written (no key was made).
    pub fn create_missing(&self, streams: &[String]) -> Result<usize, KeyStoreError> {
        let Some(dir) = &self.dir else {
            return Err(KeyStoreError::ReadOnly);
        };
        let writer = dir.lock().unwrap_or_else(|p| p.into_inner());
        self.create_locked(&writer, streams)
    }

    /// [`Keyring::create_missing`] under the writer's lock.
    fn create_locked(&self, writer: &KeyDir, streams: &[String]) -> Result<usize, KeyStoreError> {
        let mut next = self.snapshot();
        let mut made = 0;
        for stream in streams {
            let subject = next.entry(stream.clone()).or_default();
            let live = subject
                .current
                .is_some_and(|c| matches!(subject.epochs.get(&c), Some(Epoch::Live(_))));
            if live {
                continue;
            }
            let epoch = subject.epochs.keys().next_back().map_or(1, |last| last + 1);
            subject.current = Some(epoch);
            subject
                .epochs
                .insert(epoch, Epoch::Live(DataKey::random()?));
            made += 1;
        }
        if made > 0 {
            if let Some(error) = self.persist(writer, next)? {
                tracing::warn!(%error, "key store: the previous generation stays until the next rewrite");
            }
        }
        Ok(made)
    }

    /// Stops sealing new events of `stream` with its current key (they will get a new epoch);
    /// returns the highest epoch so far (0: the subject never had a key). In memory only: the
    /// erasure that follows destroys the keys durably.
    pub fn retire(&self, stream: &str) -> u32 {
        // Under the writer's lock: no rewrite in flight can bring the retired key back.
        let _writer = self
            .dir
            .as_ref()
            .map(|dir| dir.lock().unwrap_or_else(|p| p.into_inner()));
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        match state.subjects.get_mut(stream) {
            Some(subject) => {
                subject.current = None;
                subject.epochs.keys().next_back().copied().unwrap_or(0)
            }
            None => 0,
        }
    }

    /// Destroys every key of `stream` up to `epoch` (the erasure at `position`), rewriting the
    /// key store without them and scrubbing the old copy. Returns the new generation. Nothing to
    /// destroy: no rewrite.
    ///
    /// # Errors
    /// A [`KeyStoreError`] if the key store could not be rewritten.
    pub fn destroy(&self, streams: &[(String, u32)], position: u64) -> Result<u64, KeyStoreError> {
        let Some(dir) = &self.dir else {
            return Err(KeyStoreError::ReadOnly);
        };
        let writer = dir.lock().unwrap_or_else(|p| p.into_inner());
        let live = |state: &State| {
            streams.iter().any(|(stream, upto)| {
                state.subjects.get(stream).is_some_and(|s| {
                    s.epochs
                        .range(..=*upto)
                        .any(|(_, e)| matches!(e, Epoch::Live(_)))
                })
            })
        };
        if !live(&self.read_state()) {
            // Nothing left to destroy; a leftover of an earlier rewrite (an erasure whose
            // clean-up failed) is scrubbed now.
            if let Some(Slot(current)) = self.read_state().slot {
                dir_remove_leftover(&writer, current)?;
            }
            return Ok(self.generation());
        }
        let mut next = self.snapshot();
        let mut any = false;
        for (stream, upto) in streams {
            if let Some(subject) = next.get_mut(stream) {
                for (_, state) in subject.epochs.range_mut(..=*upto) {
                    if matches!(state, Epoch::Live(_)) {
                        *state = Epoch::Destroyed { position };
                        any = true;
                    }
                }
                if subject.current.is_some_and(|c| c <= *upto) {
                    subject.current = None;
                }
            }
        }
        if !any {
            return Ok(self.generation());
        }
        match self.persist(&writer, next.clone()) {
            Ok(None) => Ok(self.generation()),
            // Destroyed in the key store; its old copy is still there: not finished.
            Ok(Some(error)) => Err(error),
            Err(error) => {
                // The erasure event is in the log: the keys are gone for this process whatever
                // the disk said (the next rewrite writes them destroyed; the next open finishes
                // it).
                self.state
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .subjects = next;
                Err(error)
            }
        }
    }

    /// Every subject with its key state.
    pub fn subjects(&self) -> BTreeMap<String, SubjectKeyState> {
        self.read_state()
            .subjects
            .iter()
            .map(|(stream, keys)| {
                let mut state = SubjectKeyState {
                    live: Vec::new(),
                    destroyed: Vec::new(),
                    current: keys.current,
                };
                for (epoch, e) in &keys.epochs {
                    match e {
                        Epoch::Live(_) => state.live.push(*epoch),
                        Epoch::Destroyed { position } => state.destroyed.push((*epoch, *position)),
                    }
                }
                (stream.clone(), state)
            })
            .collect()
    }

    fn snapshot(&self) -> HashMap<String, SubjectKeys, ahash::RandomState> {
        self.read_state().subjects.clone()
    }

    fn rewrite(&self) -> Result<(), KeyStoreError> {
        let Some(dir) = &self.dir else {
            return Err(KeyStoreError::ReadOnly);
        };
        let writer = dir.lock().unwrap_or_else(|p| p.into_inner());
        let next = self.snapshot();
        match self.persist(&writer, next)? {
            None => Ok(()),
            Some(error) => Err(error),
        }
    }

    /// Writes `subjects` as the next generation, then makes it the keyring's state; then
    /// removes the old generation. `Err`: nothing changed; `Ok(Some(error))`: the new generation
    /// is the key store, the old one could not be removed (a leftover, scrubbed later).
    fn persist(
        &self,
        dir: &KeyDir,
        subjects: HashMap<String, SubjectKeys, ahash::RandomState>,
    ) -> Result<Option<KeyStoreError>, KeyStoreError> {
        let (generation, slot) = {
            let state = self.read_state();
            (state.generation + 1, state.slot)
        };
        let mut records: Vec<SubjectRecord> = Vec::with_capacity(subjects.len());
        for (stream, keys) in &subjects {
            let mut epochs = Vec::with_capacity(keys.epochs.len());
            for (epoch, state) in &keys.epochs {
                let record = match state {
                    Epoch::Destroyed { position } => EpochRecord::Destroyed {
                        position: *position,
                    },
                    Epoch::Live(key) => match &self.master {
                        None => EpochRecord::Plain(key.bytes().to_vec()),
                        Some(master) => EpochRecord::Wrapped(match key.0.wrapped.get() {
                            Some(wrapped) => wrapped.clone(),
                            None => {
                                let wrapped = master
                                    .wrap(key.bytes(), &wrap_aad(&self.log_id, stream, *epoch))?;
                                let _ = key.0.wrapped.set(wrapped.clone());
                                wrapped
                            }
                        }),
                    },
                };
                epochs.push((*epoch, record));
            }
            records.push(SubjectRecord {
                stream: stream.clone(),
                current: keys.current,
                epochs,
            });
        }
        records.sort_by(|a, b| a.stream.cmp(&b.stream));
        let master_check = match &self.master {
            None => None,
            Some(master) => Some(master.wrap(MASTER_CHECK, self.log_id.as_bytes())?),
        };
        let body = Body {
            format: keyfile::BODY_FORMAT,
            log_id: self.log_id.clone(),
            generation,
            master_check,
            subjects: records,
        };
        // The commit point: once the new slot is durable it is the key store, whatever happens
        // to the old one.
        let new_slot = dir.write_next(slot, &body)?;
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            state.subjects = subjects;
            state.generation = generation;
            state.slot = Some(new_slot);
        }
        // The old generation is overwritten with zeros before it goes (it holds every key,
        // including any destroyed now). If that fails, it is a leftover the next rewrite or open
        // scrubs: `Ok(Some(error))`, for the caller to weigh (an erasure is not finished until it
        // is gone; a new key is durable either way).
        Ok(match slot {
            Some(Slot(old)) => dir.remove(old, true).err(),
            None => None,
        })
    }
}
