//! `hybridstore-replay`: rebuilds the Postgres read models from the log, and verifies them
//! against the log projection.
//!
//! # Layout
//! - [`rebuild`]: replay into fresh tables in a staging schema, resumable chunk by chunk, then
//!   swap them in atomically (the swap itself, and the log's adoption, in `swap.rs`).
//! - [`progress`]: a progress bar on a terminal, periodic plain lines when piped.
//!
//! Verification is the library's `hybridstore::sink::postgres::verify` (the projector's tests use it too).
//! The log is opened read-only (`Wal::open_read_only`), so a rebuild runs beside a live store.

pub mod progress;
pub mod rebuild;
mod swap;
