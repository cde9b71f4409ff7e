//! What follows the log: the sinks.
//!
//! - [`postgres`]: the Postgres read models and their projector.

pub mod postgres;
