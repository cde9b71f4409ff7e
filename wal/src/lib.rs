//! `hybridstore-wal`: the write-ahead log under hybridstore. It knows bytes, positions and
//! files — nothing of events, databases or async runtimes — so it can be audited alone.
//!
//! # Layout
//! - [`format`]: magic, version, segment header and frame layout, the codec. `FORMAT.md` is its
//!   prose twin, kept in step by a test.
//! - [`segment`]: segment files (naming, preallocated creation) and their sparse indexes.
//! - `writer`: leader/follower group commit, rotation, the interval syncer, poisoning.
//! - [`prepare`]: the segment preparer, a thread that zero-fills the next segment's file under a
//!   temporary name once the active segment is half full, for rotation to rename into place.
//! - [`reader`]: forward iteration and tail-following over durable records.
//! - [`recovery`]: the segment scanner shared by recovery at open, readers and the audit tool.
//! - `wal`: the [`Wal`] handle — open (lock, log id, recovery), close (clean-shutdown marker),
//!   truncation.
//! - [`marker`]: the clean-shutdown marker that lets an open skip scanning.
//! - [`identity`]: the log's [`LogId`] and the `log-id` file that keeps it, created durably at
//!   the first writable open and never replaced.
//! - [`io`]: the storage seam ([`io::FileSystem`]), the real file system, and (feature
//!   `testing`) the simulated disk used for power-loss and fault-injection tests.
//! - [`config`] and [`error`]: options and the one error enum.
//!
//! # Example
//! ```
//! use hybridstore_wal::{Options, Position, Wal};
//! let dir = tempfile::tempdir().unwrap();
//! let wal = Wal::open(dir.path(), Options::default()).unwrap();
//! let appended = wal.append(&[b"first".as_slice(), b"second"]).unwrap();
//! assert_eq!(appended.first, Position(0));
//! let records: Vec<_> = wal.reader(Position(0)).unwrap().collect::<Result<_, _>>().unwrap();
//! assert_eq!(records[1].data.as_ref(), b"second");
//! wal.close().unwrap();
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod format;
pub mod identity;
pub mod io;
pub mod marker;
pub mod prepare;
pub mod reader;
pub mod recovery;
pub mod segment;
#[cfg(feature = "testing")]
pub mod testing;
mod wal;
mod writer;

pub use config::{Durability, Options, PrepareSegments, RecoveryMode};
pub use error::{CorruptionKind, Error, LogIdCorruption, PoisonCause, Result};
pub use format::{Position, SegmentId};
pub use identity::{LogId, ParseLogIdError};
pub use reader::{Reader, Record};
pub use wal::{AppendResult, DurableListener, Wal, LOCK_FILE_NAME};
