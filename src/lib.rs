//! hybridstore: an event-sourced write-ahead log store for a Telegram chat bot.
//!
//! # Layout
//! - [`demo`]: the `hybridstore demo` command — a simulated bot message loop on the embedded
//!   default (log only, no servers) that reports throughput and latency.
//! - The log engine is the `hybridstore-wal` crate (`wal/`); the audit tool is
//!   `hybridstore-audit` (`tools/audit/`). Events, the `Store` handle and the projections are
//!   built on top in the next steps (see `ARCHITECTURE.md`).

pub mod demo;

/// The log lives in this subdirectory of the data directory.
pub const WAL_SUBDIR: &str = "wal";
