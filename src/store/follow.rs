//! The projector thread: keeps the log projection live by following the durable log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Inner;
use crate::events::decode_record;

/// The projector thread: applies durable events as they come, publishing how far it got.
pub(super) fn follow(
    inner: std::sync::Weak<Inner>,
    mut reader: hybridstore_wal::Reader,
    shutdown: Arc<AtomicBool>,
) {
    while !shutdown.load(Ordering::Relaxed) {
        let record = match reader.next_blocking(Duration::from_millis(100)) {
            Ok(Some(record)) => record,
            Ok(None) => continue,
            Err(error) => {
                // A log closed by `close` or drop is the normal end, not a failure.
                if !shutdown.load(Ordering::Relaxed) {
                    report_tail_error(&inner, format!("the projection stopped: {error}"));
                }
                return;
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        let mut batch = vec![record];
        while batch.len() < 1024 {
            match reader.next_record() {
                Ok(Some(record)) => batch.push(record),
                _ => break,
            }
        }
        // Decode before taking the write lock, so readers wait only for the applying.
        let mut decoded = Vec::with_capacity(batch.len());
        let mut failure = None;
        for record in &batch {
            match decode_record(record.position, &record.data, &inner.keys) {
                Ok(event) => decoded.push(event),
                Err(error) => {
                    failure = Some(format!(
                        "the projection stopped at position {}: {error}",
                        record.position
                    ));
                    break;
                }
            }
        }
        let mut projection = inner.projection.write().unwrap_or_else(|p| p.into_inner());
        for event in decoded {
            projection.apply_owned(event);
        }
        if let Some(message) = failure {
            let end = projection.applied_end();
            drop(projection);
            tracing::error!("{message}");
            // The error first, then the wake-up: a read waiting for a later position sees the
            // error when it wakes and fails at once.
            *inner.tail_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
            inner.applied.send_replace(end);
            return;
        }
        let end = projection.applied_end();
        drop(projection);
        inner.applied.send_replace(end);
    }
}

pub(super) fn report_tail_error(inner: &std::sync::Weak<Inner>, message: String) {
    tracing::error!("{message}");
    if let Some(inner) = inner.upgrade() {
        *inner.tail_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
        // Wake the reads waiting for the projection: they fail at once with the reason.
        inner.applied.send_modify(|_| {});
    }
}
