//! The typed reads of the bot's hot path, and the sources that answer them.
//!
//! # One read-your-writes rule
//! A read with `min_position = P` sees the event at position `P`: it is served only by a source
//! whose applied end (one past the last event it has applied) is beyond `P` — [`reached`]. The
//! log projection, every sink's `wait_for`, and every read source use this one function.

use hybridstore_wal::Position;

/// Whether a source whose applied end is `applied_end` (every event below it applied) has
/// applied the event at `min_position`.
pub fn reached(applied_end: Position, min_position: Position) -> bool {
    applied_end > min_position
}
