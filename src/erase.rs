//! Erasing a person everywhere the store put them (design §10), with a receipt.
//!
//! [`Hybrid::erase`]: the log side first ([`Store::erase`]: the erasure event, then the
//! subject's keys destroyed, so their sealed fields in every segment are noise), then a bounded
//! wait until every sink reports a position at or past the erasure — the log projection of this
//! process, the Postgres projector (its rows of the subject deleted in the batch that applies the
//! erasure, kept shadow mismatches too), the cache invalidation (the Redis entries replaced by
//! floors, tier 1 dropped) — and a [`Receipt`] saying how far each got, recorded in the log
//! (`ErasureReceiptRecorded` on the bot's stream). A sink that did not get there in time is
//! named; [`Hybrid::erasure_receipt`] checks again later and records the completed receipt under
//! the same id.
//!
//! What a receipt cannot vouch for, and says so by not listing it: the tier-1 caches of other
//! processes (they drop the entries on the invalidation notice, or at their TTL), Postgres
//! tables of a component no longer projected, copies made outside the store (backups).

use std::time::Duration;

use hybridstore_wal::Position;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::{ErasedKey, ErasureReceiptRecorded, Event, JsonText};
use crate::hybrid::{Hybrid, HybridError};
use crate::ids::{StreamId, Subject, Timestamp};
use crate::read::reached;
use crate::store::{ExpectedVersion, LogErasure, NewEvent, ReadDirection, Store};
use crate::StoreError;

/// Default bound on waiting for the sinks.
pub const RECEIPT_WAIT_DEFAULT: Duration = Duration::from_secs(10);

/// How far one sink had got when the receipt was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkReceipt {
    /// `log-projection`, `postgres`, `cache` (the invalidation of both tiers).
    pub sink: String,
    /// The last position it had applied (`None`: nothing yet).
    pub position: Option<u64>,
    /// Whether that is at or past the erasure.
    pub reached: bool,
    /// Why it is not there, if it is not (stopped, retrying after an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The receipt of an erasure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Its id (`hybridstore erase --receipt ID` asks again).
    pub receipt_id: Uuid,
    /// Who was erased.
    pub subject: Subject,
    /// The erasure event's position in the log.
    pub erasure_position: u64,
    /// When the erasure was recorded (RFC 3339).
    pub erased_at: String,
    /// The subject's keys destroyed, each stream up to the epoch named (epoch 0: that stream
    /// never had a key); erasing again names the same ones (nothing new to destroy: the
    /// key-store generation stays).
    pub keys_destroyed: Vec<ErasedKey>,
    /// The key store's generation once they were.
    pub key_store_generation: u64,
    /// The subject's events whose personal fields were sealed: unreadable now.
    pub sealed_events_shredded: u64,
    /// The subject's events with personal fields written in the clear before sealing existed:
    /// they cannot be shredded and are still readable in the log.
    pub plaintext_events_remaining: u64,
    /// Every sink, and how far it had got.
    pub sinks: Vec<SinkReceipt>,
    /// Every sink reached the erasure.
    pub complete: bool,
    /// When the sinks were last checked (RFC 3339).
    pub checked_at: String,
}

impl Hybrid {
    /// Erases `subject` from the log, the key store and every projection, waits at most `wait`
    /// for the sinks, and records and returns the receipt.
    ///
    /// # Errors
    /// [`HybridError::NoLog`] on a replica; the store's errors (an unknown subject, a log or key
    /// store failure).
    pub async fn erase(&self, subject: &Subject, wait: Duration) -> Result<Receipt, HybridError> {
        let store = self.store().ok_or(HybridError::NoLog)?;
        self.reads().shadow_stats().forget_subject(subject);
        let erased: LogErasure = store.erase(subject).await?;
        let sinks = self.wait_for_sinks(store, erased.position, wait).await;
        self.forget_shadow_reads(subject).await;
        let complete = sinks.iter().all(|s| s.reached);
        let receipt = Receipt {
            receipt_id: Uuid::now_v7(),
            subject: subject.clone(),
            erasure_position: erased.position.0,
            erased_at: erased.erased_at.to_rfc3339(),
            keys_destroyed: erased.keys,
            key_store_generation: erased.key_store_generation,
            sealed_events_shredded: erased.sealed_events,
            plaintext_events_remaining: erased.plaintext_events,
            sinks,
            complete,
            checked_at: Timestamp::now().to_rfc3339(),
        };
        record(store, &receipt).await?;
        Ok(receipt)
    }

    /// The receipt `id` of `bot`, checked again if it was not complete (waiting at most `wait`
    /// for the sinks) and, once complete, recorded again under the same id. `None`: no such
    /// receipt.
    ///
    /// # Errors
    /// As [`Hybrid::erase`].
    pub async fn erasure_receipt(
        &self,
        bot: &crate::ids::BotId,
        id: Uuid,
        wait: Duration,
    ) -> Result<Option<Receipt>, HybridError> {
        let store = self.store().ok_or(HybridError::NoLog)?;
        let Some(mut receipt) = find_receipt(store, bot, id).await? else {
            return Ok(None);
        };
        if receipt.complete {
            return Ok(Some(receipt));
        }
        receipt.sinks = self
            .wait_for_sinks(store, Position(receipt.erasure_position), wait)
            .await;
        self.forget_shadow_reads(&receipt.subject).await;
        receipt.complete = receipt.sinks.iter().all(|s| s.reached);
        receipt.checked_at = Timestamp::now().to_rfc3339();
        if receipt.complete {
            record(store, &receipt).await?;
        }
        Ok(Some(receipt))
    }

    /// Drops the subject's kept shadow mismatches once more, in this process and in the table:
    /// a flush that ran while the erasure was being made may have written some back.
    async fn forget_shadow_reads(&self, subject: &Subject) {
        self.reads().shadow_stats().forget_subject(subject);
        let Some(pool) = self.pool() else { return };
        let mut marks = std::collections::HashSet::new();
        marks.insert((subject.bot().clone(), subject.kind(), subject.id()));
        let forgotten = async {
            let mut conn = pool.acquire().await?;
            crate::read::shadow::forget_erased(&mut conn, &marks).await
        };
        if let Err(error) = forgotten.await {
            tracing::warn!(%error, "erase: the shadow mismatches could not be checked again");
        }
    }

    /// The sinks that must reach an erasure: the Postgres projector once any component state
    /// is set (it projects configuration then, and the components at `enabled` or later), and
    /// the cache invalidation with it when a cache is configured.
    async fn expected_sinks(&self, store: &Store) -> Vec<&'static str> {
        if self.supervisor().is_none() {
            return Vec::new();
        }
        let states_set = store
            .read_projection(None, |p| p.component_states_iter().next().is_some())
            .await
            .unwrap_or(true);
        match (states_set, self.reads().cache().is_some()) {
            (false, _) => Vec::new(),
            (true, false) => vec!["postgres"],
            (true, true) => vec!["postgres", "cache"],
        }
    }

    /// Whether `hybridstore-replay` holds its rebuild lock (its staging tables may hold what
    /// the erasure removed, until its swap and the projector's next batch).
    async fn rebuild_running(&self) -> bool {
        let Some(pool) = self.pool() else {
            return false;
        };
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND objsubid = 1 AND classid::bigint = ($1 >> 32) \
             AND objid::bigint = ($1 & 4294967295))",
        )
        .bind(crate::sink::postgres::REBUILD_LOCK_KEY)
        .fetch_one(pool)
        .await
        .unwrap_or(false)
    }

    /// Waits (at most `wait`) until every sink has applied `position`, and says how far each got.
    async fn wait_for_sinks(
        &self,
        store: &Store,
        position: Position,
        wait: Duration,
    ) -> Vec<SinkReceipt> {
        let deadline = tokio::time::Instant::now() + wait;
        let log = store
            .read_projection(Some(position), |p| p.applied_end())
            .await;
        let mut receipts = vec![match log {
            Ok(end) => SinkReceipt {
                sink: "log-projection".into(),
                position: end.0.checked_sub(1),
                reached: reached(end, position),
                note: None,
            },
            Err(error) => SinkReceipt {
                sink: "log-projection".into(),
                position: None,
                reached: false,
                note: Some(crate::error::one_line(&error)),
            },
        }];
        let Some(supervisor) = self.supervisor() else {
            return receipts;
        };
        supervisor.kick();
        // The supervisor's first round (a CLI run just opened it) starts the sinks.
        supervisor.settle(wait.min(Duration::from_secs(5))).await;
        let expected = self.expected_sinks(store).await;
        loop {
            let statuses = supervisor.sink_statuses();
            let all = statuses
                .iter()
                .all(|s| s.loaded && reached(s.committed, position))
                && expected
                    .iter()
                    .all(|e| statuses.iter().any(|s| s.sink == *e));
            if all || tokio::time::Instant::now() >= deadline {
                for missing in expected
                    .iter()
                    .filter(|e| !statuses.iter().any(|s| s.sink == **e))
                {
                    receipts.push(SinkReceipt {
                        sink: (*missing).into(),
                        position: None,
                        reached: false,
                        note: Some("not running (could it start? Postgres down?)".into()),
                    });
                }
                receipts.extend(statuses.into_iter().map(|s| {
                    let reached = s.loaded && reached(s.committed, position);
                    let note = if reached {
                        None
                    } else if let Some(stopped) = &s.stopped {
                        Some(format!("stopped: {stopped}"))
                    } else if let Some(error) = s.retrying_after() {
                        Some(format!("retrying after: {error}"))
                    } else {
                        Some("behind when the wait ended".into())
                    };
                    SinkReceipt {
                        sink: s.sink.into(),
                        position: s.loaded.then(|| s.committed.0.checked_sub(1)).flatten(),
                        reached,
                        note,
                    }
                }));
                if self.rebuild_running().await {
                    receipts.push(SinkReceipt {
                        sink: "replay".into(),
                        position: None,
                        reached: false,
                        note: Some("hybridstore-replay is rebuilding: its staging tables may hold the subject until its swap and the projector's next batch; ask again after it ends".into()),
                    });
                }
                return receipts;
            }
            let mut watch = supervisor.watch();
            let _ = tokio::time::timeout(Duration::from_millis(50), watch.changed()).await;
        }
    }
}

/// Appends the receipt to the bot's stream.
async fn record(store: &Store, receipt: &Receipt) -> Result<(), StoreError> {
    let json = serde_json::to_value(receipt).expect("a receipt is JSON");
    let event = Event::ErasureReceiptRecorded(ErasureReceiptRecorded {
        receipt_id: receipt.receipt_id.to_string(),
        receipt: JsonText::from_value(&json),
    });
    store
        .append_store_events(
            &StreamId::bot(receipt.subject.bot()),
            ExpectedVersion::Any,
            vec![NewEvent::new(event)],
        )
        .await?;
    Ok(())
}

/// The newest recording of receipt `id` on `bot`'s stream.
async fn find_receipt(
    store: &Store,
    bot: &crate::ids::BotId,
    id: Uuid,
) -> Result<Option<Receipt>, StoreError> {
    let stream = StreamId::bot(bot);
    let Some((head, _)) = store.stream_head(&stream) else {
        return Ok(None);
    };
    let wanted = id.to_string();
    let mut from = head;
    loop {
        let events = store
            .read_stream(&stream, from, ReadDirection::Backward, 256)
            .await?;
        for event in &events {
            if let Event::ErasureReceiptRecorded(e) = &event.event {
                if e.receipt_id == wanted {
                    return Ok(serde_json::from_value(e.receipt.value()).ok());
                }
            }
        }
        match events.last() {
            Some(last) if last.stream_version.0 > 0 => {
                from = crate::ids::StreamVersion(last.stream_version.0 - 1);
            }
            _ => return Ok(None),
        }
    }
}
