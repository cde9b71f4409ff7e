//! `hybridstore-replay`: rebuilds the Postgres read models from the log, and verifies them
//! against the log projection.
//!
//! # Layout
//! - [`rebuild`]: replay into fresh tables in a staging schema, resumable chunk by chunk, then
//!   swap them in atomically.
//! - [`verify`]: compare every read-model row with the log projection at the tables' checkpoint.
//! - [`progress`]: a progress bar on a terminal, periodic plain lines when piped.
//!
//! The log is opened read-only (`Wal::open_read_only`), so a rebuild runs beside a live store.

pub mod progress;
pub mod rebuild;
pub mod verify;

use std::path::Path;

use anyhow::Context as _;
use hybridstore::events::{decode_record, RecordedEvent};
use hybridstore_wal::{Options, Position, Wal};

/// Opens the log of a data directory read-only.
///
/// # Errors
/// When the directory holds no readable log.
pub fn open_log(data_dir: &Path) -> anyhow::Result<Wal> {
    let dir = data_dir.join(hybridstore::WAL_SUBDIR);
    if !dir.is_dir() {
        anyhow::bail!(
            "no log in {} (expected {})",
            data_dir.display(),
            dir.display()
        );
    }
    Wal::open_read_only(&dir, Options::default())
        .with_context(|| format!("cannot open the log in {}", dir.display()))
}

/// Iterates the decoded events of `log` in `from..to`.
pub fn events(
    log: &Wal,
    from: Position,
    to: Position,
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<RecordedEvent>>> {
    let reader = log
        .reader(from)
        .with_context(|| format!("cannot read the log from position {from}"))?;
    Ok(reader
        .take_while(move |r| r.as_ref().map_or(true, |r| r.position < to))
        .map(|record| {
            let record = record.context("reading the log")?;
            decode_record(record.position, &record.data).with_context(|| {
                format!("the event at position {} does not decode", record.position)
            })
        }))
}
