//! [`StoreConfig`] and the store's limits.

use std::path::PathBuf;
use std::time::Duration;

use hybridstore_wal::Options as WalOptions;

/// Default limit on one event's encoded size: 1 MiB.
pub const EVENT_SIZE_MAX_BYTES_DEFAULT: usize = 1024 * 1024;
/// Most events in one append.
pub const APPEND_EVENTS_MAX: usize = 1000;
/// Longest idempotency key.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 256;

/// Configuration of a [`Store`](super::Store).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Data directory; the log lives in `data_dir/wal`.
    pub data_dir: PathBuf,
    /// Options of the log (durability, segment size, storage seam).
    pub wal: WalOptions,
    /// Largest encoded event accepted.
    pub event_size_max_bytes: usize,
    /// Messages kept in memory per conversation; older ones are read from the log.
    pub conversation_tail_len: usize,
    /// Longest a read with `min_position` waits for the projection.
    pub read_wait_max: Duration,
    /// Whether an appender that finds no batch forming writes its own append (the lighter
    /// path: no hand-off to the writer thread and back; on by default). Off, every append goes
    /// through the writer thread.
    pub appends_by_caller: bool,
    /// The master key wrapping the subjects' data keys in the key store (`None`: kept in the
    /// clear, readable by whoever can read the data directory). The CLI and the daemon take it
    /// from `HYBRIDSTORE_MASTER_KEY` or `HYBRIDSTORE_MASTER_KEY_FILE`.
    pub master_key: Option<crate::crypto::MasterKey>,
    /// Whether personal fields are sealed with their subject's key (on by default). Off, new
    /// events are written in the clear: an erasure then clears the projections but cannot
    /// shred those events, and its receipt counts them as plaintext. For logs whose texts must
    /// stay readable without the key store (and the benchmark's baseline).
    pub seal_personal_fields: bool,
    /// Test-only: the key store writes without fdatasync / directory fsync (the mutation the
    /// key-durability test must catch). Never set it outside tests.
    #[doc(hidden)]
    pub key_store_skips_sync_for_tests: bool,
}

impl StoreConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            wal: WalOptions::default(),
            event_size_max_bytes: EVENT_SIZE_MAX_BYTES_DEFAULT,
            conversation_tail_len: 50,
            read_wait_max: Duration::from_secs(2),
            appends_by_caller: true,
            master_key: None,
            seal_personal_fields: true,
            key_store_skips_sync_for_tests: false,
        }
    }

    /// The same configuration with the master key the environment names
    /// (`HYBRIDSTORE_MASTER_KEY`, or a file named by `HYBRIDSTORE_MASTER_KEY_FILE`), if any.
    ///
    /// # Errors
    /// A master key that is not 32 bytes (64 hex digits), or a file that cannot be read.
    pub fn with_master_key_from_env(mut self) -> Result<StoreConfig, crate::crypto::KeyStoreError> {
        self.master_key = crate::crypto::MasterKey::from_env()?;
        Ok(self)
    }

    /// The log directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join(crate::WAL_SUBDIR)
    }
}
