//! The rebuild at open: every durable event of the log into the projection and the indexes.

use std::ops::ControlFlow;

use hybridstore_wal::Wal;

use super::indexes::{apply_to_indexes, Indexes};
use super::RebuildStats;
use crate::error::Result;
use crate::projection::{replay_log, Projection};

/// Applies every durable event of `wal` to `projection` (and fills the indexes, if given).
pub(super) fn rebuild(
    wal: &Wal,
    keys: &crate::crypto::Keyring,
    projection: &mut Projection,
    indexes: Option<&Indexes>,
    erasures: &mut super::erase::FoundErasures,
) -> Result<RebuildStats> {
    let mut events = 0u64;
    let end = replay_log(
        wal,
        wal.first_position(),
        None,
        keys,
        |event| apply_to_indexes(indexes, event),
        |event| {
            super::erase::note_erasure(erasures, &event);
            projection.apply_owned(event);
            events += 1;
            ControlFlow::Continue(())
        },
    )?;
    projection.advance_to(end);
    Ok(RebuildStats { events, end })
}
