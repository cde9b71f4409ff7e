//! `hybridstore-audit`: verify, inspect, dump and repair the segments of a hybridstore log, and
//! list its subjects.
//!
//! The tool reads segments with the engine's own scanner
//! ([`hybridstore_wal::recovery::scan_segment`]), so it can never disagree with recovery about
//! which bytes are valid. Every command but `repair` is read-only and takes no lock.
//!
//! # Layout
//! - [`check`]: locating the log directory, checking one segment, the clean-shutdown marker, the
//!   `log-id` file and the whole log; the [`check::Problem`] type every command reports.
//! - [`output`]: the output format, the JSON Lines `{type, data}` envelope and the JSON shapes.
//! - [`verify`]: `verify` — every frame of every segment, exit 1 on problems.
//! - [`stat`]: `stat` — the log id, counts, positions, bytes and a per-segment table.
//! - [`dump`]: `dump` — records from a position, one line each, decoded as events with the
//!   store's codec (`hybridstore::events`); records that do not decode are shown with the reason.
//!   `find` is `dump` with a [`dump::Filter`]: a stream, an event id, or an idempotency key.
//!   Both decode through the key store beside the log ([`check::LogDir::keyring`]): erased and
//!   locked personal fields say so (`"<erased>"` for people, `event.personal` in JSON).
//! - [`subjects`]: `subjects` — one pass over the log: every subject (chat partner or user) with
//!   its event counts, its personal fields sealed, erased, locked or in plaintext, its erasures
//!   and its keys in the key store.
//! - [`repair`]: `repair` — the only command that writes: takes the writer lock, backs up what it
//!   cuts, cuts, and verifies again.
//!
//! The binary (`src/main.rs`) only parses arguments, calls one of these, and maps the
//! [`Verdict`] (or an error) to the exit code.

pub mod check;
pub mod dump;
pub mod output;
pub mod repair;
pub mod stat;
pub mod subjects;
pub mod verify;

pub use output::Format;

/// What a command found, mapped to the exit code by the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The log is clean (exit 0).
    Clean,
    /// Problems were found or remain (exit 1).
    Problems,
}

impl Verdict {
    /// The process exit code: 0 clean, 1 problems. (2, "could not run", is for errors.)
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Clean => 0,
            Verdict::Problems => 1,
        }
    }

    /// [`Verdict::Clean`] when there are no problems.
    pub fn from_problem_count(count: usize) -> Verdict {
        if count == 0 {
            Verdict::Clean
        } else {
            Verdict::Problems
        }
    }
}

/// Exit code for "could not run" (missing directory, I/O failure, lock held by a writer).
pub const EXIT_COULD_NOT_RUN: u8 = 2;

/// True when `error` (or anything in its chain) is a broken pipe: the reader of our output went
/// away (`dump | head`), which is not a failure of the tool.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
