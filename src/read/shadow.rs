//! Shadow reads (design §5, `dual-write`): a deterministic sample of reads is answered by the log
//! projection and also read from Postgres *at the same log position*, and the two are compared.
//!
//! # Outcomes
//! - `match` / `mismatch`: both sides answered for the same position (the log projection's and
//!   Postgres's applied ends were equal) and agreed or not. A mismatch keeps both values and
//!   positions.
//! - `lagging`: Postgres had not reached the log's position within the budget (or the two sides
//!   never stood at one position while the log moved on). Not a mismatch.
//! - `error`: Postgres failed; `timeout`: Postgres did not answer within the budget.
//!
//! # The window
//! A step `dual-write → database-only` needs zero mismatches over a window of at least N compared
//! reads and T minutes ([`WindowRule`]). The counts live in Postgres (table `shadow_reads`), so the
//! process that decides the step (the CLI, another bot process) sees the reads of every process:
//! each [`ShadowStats`] keeps its outcomes since the last flush and adds them to the row. A
//! mismatch restarts the window (`window_start` moves to it, `window_matched` to the matches since
//! it); entering `dual-write` resets the row.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use hybridstore_wal::Position;
use serde::Serialize;
use sqlx::PgPool;

use crate::ids::{BotId, Component, Timestamp};

/// How many mismatches are kept per component (in memory and in the table).
pub const MISMATCHES_KEPT: usize = 10;

/// Whether the read of `key` of `component` of `bot` is shadow-read at sampling `rate` (0 to 1).
/// Sampling is by key, so one chat's reads are all compared or none, and it is the same in every
/// process (CRC-32 of the key, not a per-process hasher).
pub fn sampled(rate: f64, bot: &BotId, component: Component, key: &str) -> bool {
    if rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(bot.as_str().as_bytes());
    hasher.update(&[0]);
    hasher.update(component.as_str().as_bytes());
    hasher.update(&[0]);
    hasher.update(key.as_bytes());
    let bucket = f64::from(hasher.finalize()) / f64::from(u32::MAX);
    bucket < rate
}

/// What one shadow read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Equal at the same position.
    Match,
    /// Different at the same position.
    Mismatch,
    /// Postgres behind the log's position.
    Lagging,
    /// Postgres failed.
    Error,
    /// Postgres did not answer in time.
    Timeout,
}

/// A mismatch: the key and both sides.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Mismatch {
    /// Which entry (e.g. `profile 42`).
    pub key: String,
    /// The log projection's answer.
    pub log: serde_json::Value,
    /// The log projection's applied end.
    pub log_position: Position,
    /// Postgres's answer.
    pub postgres: serde_json::Value,
    /// Postgres's applied end for the component.
    pub postgres_position: Position,
    /// When it was seen.
    pub at: Timestamp,
}

/// Counts of outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counts {
    /// Matches.
    pub matched: u64,
    /// Mismatches.
    pub mismatched: u64,
    /// Lagging.
    pub lagging: u64,
    /// Errors.
    pub errors: u64,
    /// Timeouts.
    pub timeouts: u64,
}

impl Counts {
    fn add(&mut self, outcome: Outcome) {
        let slot = match outcome {
            Outcome::Match => &mut self.matched,
            Outcome::Mismatch => &mut self.mismatched,
            Outcome::Lagging => &mut self.lagging,
            Outcome::Error => &mut self.errors,
            Outcome::Timeout => &mut self.timeouts,
        };
        *slot += 1;
    }

    /// Reads compared at one position (matches and mismatches).
    pub fn compared(&self) -> u64 {
        self.matched + self.mismatched
    }
}

/// The outcomes of one (bot, component) not yet added to the table.
#[derive(Debug, Default)]
struct Pending {
    counts: Counts,
    /// Matches after the last mismatch of this batch (all of them when there was none).
    matched_since_mismatch: u64,
    last_mismatch_at: Option<Timestamp>,
    mismatches: VecDeque<Mismatch>,
}

/// The shadow outcomes of this process, kept until [`ShadowStats::flush`] adds them to the
/// table; [`ShadowStats::local`] has this process's totals since start (for metrics).
#[derive(Debug, Default)]
pub struct ShadowStats {
    pending: Mutex<BTreeMap<(BotId, Component), Pending>>,
    totals: Mutex<BTreeMap<(BotId, Component), Counts>>,
    /// One flush at a time: a flush returns only once every outcome recorded before it is in
    /// the table, even when another flush (the supervisor's) had taken them first.
    flushing: tokio::sync::Mutex<()>,
}

impl ShadowStats {
    /// Records an outcome (and the mismatch, if it is one).
    pub fn record(
        &self,
        bot: &BotId,
        component: Component,
        outcome: Outcome,
        mismatch: Option<Mismatch>,
    ) {
        let key = (bot.clone(), component);
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let entry = pending.entry(key.clone()).or_default();
            entry.counts.add(outcome);
            match outcome {
                Outcome::Match => entry.matched_since_mismatch += 1,
                Outcome::Mismatch => {
                    entry.matched_since_mismatch = 0;
                    entry.last_mismatch_at = Some(Timestamp::now());
                    if let Some(mismatch) = mismatch {
                        tracing::warn!(
                            bot = %bot, component = %component, key = %mismatch.key,
                            log_position = mismatch.log_position.0,
                            postgres_position = mismatch.postgres_position.0,
                            "shadow read mismatch"
                        );
                        entry.mismatches.push_back(mismatch);
                        while entry.mismatches.len() > MISMATCHES_KEPT {
                            entry.mismatches.pop_front();
                        }
                    }
                }
                _ => {}
            }
        }
        self.totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .add(outcome);
    }

    /// This process's outcomes since start, per (bot, component).
    pub fn local(&self) -> BTreeMap<(BotId, Component), Counts> {
        self.totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forgets the pending outcomes of (bot, component) (its window was reset).
    pub fn forget(&self, bot: &BotId, component: Component) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(bot.clone(), component));
    }

    /// Drops the kept mismatches of an erased subject not flushed yet (they hold the values
    /// read).
    pub fn forget_subject(&self, subject: &crate::ids::Subject) {
        let entries = erased_entries(subject.kind(), subject.id());
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for ((bot, _), counts) in pending.iter_mut() {
            if bot == subject.bot() {
                counts.mismatches.retain(|m| !entries.contains(&m.key));
            }
        }
    }

    /// Adds the pending outcomes to the table. Outcomes that could not be written are kept for
    /// the next flush.
    ///
    /// # Errors
    /// The database error.
    pub async fn flush(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let _one_at_a_time = self.flushing.lock().await;
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut failed = None;
        let mut unwritten = BTreeMap::new();
        for (key, pending) in taken {
            if failed.is_some() {
                unwritten.insert(key, pending);
                continue;
            }
            if let Err(error) = add_to_table(pool, &key.0, key.1, &pending).await {
                failed = Some(error);
                unwritten.insert(key, pending);
            }
        }
        if !unwritten.is_empty() {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (key, old) in unwritten {
                let entry = pending.entry(key).or_default();
                merge_older(entry, old);
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// Puts `older` (outcomes that came before `newer`'s) back in front of `newer`.
fn merge_older(newer: &mut Pending, older: Pending) {
    let c = &mut newer.counts;
    c.matched += older.counts.matched;
    c.mismatched += older.counts.mismatched;
    c.lagging += older.counts.lagging;
    c.errors += older.counts.errors;
    c.timeouts += older.counts.timeouts;
    if newer.last_mismatch_at.is_none() {
        newer.matched_since_mismatch += older.matched_since_mismatch;
        newer.last_mismatch_at = older.last_mismatch_at;
    }
    let mut mismatches = older.mismatches;
    mismatches.extend(newer.mismatches.drain(..));
    while mismatches.len() > MISMATCHES_KEPT {
        mismatches.pop_front();
    }
    newer.mismatches = mismatches;
}

async fn add_to_table(
    pool: &PgPool,
    bot: &BotId,
    component: Component,
    pending: &Pending,
) -> Result<(), sqlx::Error> {
    let c = pending.counts;
    // Values may hold U+0000, which jsonb cannot: stored through the read models' mapping.
    let mismatches = serde_json::to_value(&pending.mismatches).unwrap_or_default();
    let mismatches = crate::sink::postgres::mapping::json_in(&mismatches).into_owned();
    sqlx::query(
        "INSERT INTO shadow_reads AS s (bot, component, window_start_ms, window_matched, \
             matched, mismatched, lagging, errors, timeouts, last_mismatches) \
         VALUES ($1, $2, coalesce($3, $4), $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (bot, component) DO UPDATE SET \
             window_start_ms = CASE WHEN $3 IS NULL THEN s.window_start_ms \
                                    ELSE greatest(s.window_start_ms, $3) END, \
             window_matched = CASE WHEN $3 IS NULL THEN s.window_matched + $5 ELSE $5 END, \
             matched = s.matched + $6, mismatched = s.mismatched + $7, lagging = s.lagging + $8, \
             errors = s.errors + $9, timeouts = s.timeouts + $10, \
             last_mismatches = (SELECT coalesce(jsonb_agg(m), '[]'::jsonb) FROM \
                 (SELECT m FROM jsonb_array_elements(s.last_mismatches || $11) \
                  WITH ORDINALITY AS e(m, n) ORDER BY n DESC LIMIT $12) AS kept)",
    )
    .bind(bot.as_str())
    .bind(component.as_str())
    .bind(pending.last_mismatch_at.map(|t| t.0))
    .bind(Timestamp::now().0)
    .bind(count(pending.matched_since_mismatch))
    .bind(count(c.matched))
    .bind(count(c.mismatched))
    .bind(count(c.lagging))
    .bind(count(c.errors))
    .bind(count(c.timeouts))
    .bind(mismatches)
    .bind(MISMATCHES_KEPT as i64)
    .execute(pool)
    .await?;
    Ok(())
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The shadow counts of one (bot, component) as the table holds them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowReport {
    /// Since the component last entered `dual-write`.
    pub totals: Counts,
    /// When the current window started (entering `dual-write`, or the last mismatch).
    pub window_start: Timestamp,
    /// Matches in the current window.
    pub window_matched: u64,
    /// The last mismatches, newest first.
    pub last_mismatches: Vec<Mismatch>,
}

/// Reads the counts of (bot, component), if the table has them.
///
/// # Errors
/// The database error.
pub async fn report(
    pool: &PgPool,
    bot: &BotId,
    component: Component,
) -> Result<Option<ShadowReport>, sqlx::Error> {
    use sqlx::Row as _;
    let row = sqlx::query(
        "SELECT window_start_ms, window_matched, matched, mismatched, lagging, errors, timeouts, \
                last_mismatches FROM shadow_reads WHERE bot = $1 AND component = $2",
    )
    .bind(bot.as_str())
    .bind(component.as_str())
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let n = |i: usize| -> Result<u64, sqlx::Error> {
        Ok(u64::try_from(row.try_get::<i64, _>(i)?).unwrap_or(0))
    };
    let mismatches: serde_json::Value = row.try_get(7)?;
    let mismatches = crate::sink::postgres::mapping::json_out(mismatches).unwrap_or_default();
    let mut last_mismatches: Vec<Mismatch> = serde_json::from_value(mismatches).unwrap_or_default();
    last_mismatches.reverse();
    Ok(Some(ShadowReport {
        totals: Counts {
            matched: n(2)?,
            mismatched: n(3)?,
            lagging: n(4)?,
            errors: n(5)?,
            timeouts: n(6)?,
        },
        window_start: Timestamp(row.try_get(0)?),
        window_matched: n(1)?,
        last_mismatches,
    }))
}

/// Starts a new window for (bot, component): zero counts from now (entering `dual-write`).
///
/// # Errors
/// The database error.
pub async fn reset(pool: &PgPool, bot: &BotId, component: Component) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO shadow_reads (bot, component, window_start_ms, window_matched, matched, \
             mismatched, lagging, errors, timeouts, last_mismatches) \
         VALUES ($1, $2, $3, 0, 0, 0, 0, 0, 0, '[]') \
         ON CONFLICT (bot, component) DO UPDATE SET window_start_ms = $3, window_matched = 0, \
             matched = 0, mismatched = 0, lagging = 0, errors = 0, timeouts = 0, \
             last_mismatches = '[]'",
    )
    .bind(bot.as_str())
    .bind(component.as_str())
    .bind(Timestamp::now().0)
    .execute(pool)
    .await?;
    Ok(())
}

/// Starts a new window for (bot, component) unless its window started at or after `entered`
/// (the time it entered `dual-write`): what every process may call when it sees the state, once.
///
/// # Errors
/// The database error.
pub async fn reset_if_before(
    pool: &PgPool,
    bot: &BotId,
    component: Component,
    entered: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO shadow_reads AS s (bot, component, window_start_ms, window_matched, matched, \
             mismatched, lagging, errors, timeouts, last_mismatches) \
         VALUES ($1, $2, $3, 0, 0, 0, 0, 0, 0, '[]') \
         ON CONFLICT (bot, component) DO UPDATE SET window_start_ms = $3, window_matched = 0, \
             matched = 0, mismatched = 0, lagging = 0, errors = 0, timeouts = 0, \
             last_mismatches = '[]' \
         WHERE s.window_start_ms < $3",
    )
    .bind(bot.as_str())
    .bind(component.as_str())
    .bind(entered.0)
    .execute(pool)
    .await?;
    Ok(())
}

/// What a clean window needs before `dual-write → database-only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowRule {
    /// Matches in the window, at least.
    pub reads_min: u64,
    /// Length of the window, at least.
    pub duration_min: Duration,
}

impl Default for WindowRule {
    fn default() -> WindowRule {
        WindowRule {
            reads_min: 1000,
            duration_min: Duration::from_secs(15 * 60),
        }
    }
}

impl WindowRule {
    /// Why the window does not allow the step yet, if it does not.
    pub fn unmet(&self, report: Option<&ShadowReport>, now: Timestamp) -> Option<String> {
        let Some(report) = report else {
            return Some("no shadow reads recorded since entering dual-write".into());
        };
        let age_ms = now.0.saturating_sub(report.window_start.0).max(0);
        let need_ms = i64::try_from(self.duration_min.as_millis()).unwrap_or(i64::MAX);
        if report.window_matched < self.reads_min || age_ms < need_ms {
            let last = match report.last_mismatches.first() {
                Some(m) => format!(", last mismatch {} at {}", m.key, m.at.to_rfc3339()),
                None => String::new(),
            };
            return Some(format!(
                "the shadow window has {} matching reads over {}s without a mismatch; it needs {} over {}s{last}",
                report.window_matched,
                age_ms / 1000,
                self.reads_min,
                self.duration_min.as_secs()
            ));
        }
        None
    }
}

/// The entries a shadow mismatch of an erased subject names (`Query::entry`).
pub fn erased_entries(kind: crate::ids::SubjectKind, id: i64) -> Vec<String> {
    match kind {
        crate::ids::SubjectKind::Chat => {
            vec![format!("profile {id}"), format!("conversation {id}")]
        }
        // A user's erasure takes their private chat (chat id = user id) too.
        crate::ids::SubjectKind::User => vec![
            format!("user {id}"),
            format!("profile {id}"),
            format!("conversation {id}"),
        ],
    }
}

/// Removes the kept mismatches of erased subjects from `shadow_reads` (they hold both values
/// read: personal data).
///
/// # Errors
/// The statement's.
pub async fn forget_erased(
    conn: &mut sqlx::PgConnection,
    erased: &std::collections::HashSet<(BotId, crate::ids::SubjectKind, i64)>,
) -> Result<(), sqlx::Error> {
    let (mut bots, mut entries) = (Vec::new(), Vec::new());
    for (bot, kind, id) in erased {
        for entry in erased_entries(*kind, *id) {
            bots.push(bot.to_string());
            entries.push(entry);
        }
    }
    sqlx::query(
        "UPDATE shadow_reads s SET last_mismatches = (SELECT coalesce(jsonb_agg(m), '[]'::jsonb) \
         FROM jsonb_array_elements(s.last_mismatches) m WHERE NOT EXISTS (SELECT 1 FROM \
         UNNEST($1::text[], $2::text[]) AS e(b, n) WHERE e.b = s.bot AND e.n = m->>'key')) \
         WHERE s.bot = ANY($1)",
    )
    .bind(bots)
    .bind(entries)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves sampling is by key: the same key is always sampled or never, and a rate samples
    /// about that share of keys.
    #[test]
    fn sampling_is_by_key() {
        let bot = BotId::new("b").unwrap();
        let keys: Vec<String> = (0..10_000).map(|i| format!("profile {i}")).collect();
        let first: Vec<bool> = keys
            .iter()
            .map(|k| sampled(0.1, &bot, Component::Profiles, k))
            .collect();
        let again: Vec<bool> = keys
            .iter()
            .map(|k| sampled(0.1, &bot, Component::Profiles, k))
            .collect();
        assert_eq!(first, again);
        let share = first.iter().filter(|s| **s).count();
        assert!((700..1300).contains(&share), "{share} of 10000 at 10%");
        assert!(keys
            .iter()
            .all(|k| sampled(1.0, &bot, Component::Profiles, k)));
        assert!(!keys
            .iter()
            .any(|k| sampled(0.0, &bot, Component::Profiles, k)));
    }

    /// Proves the window rule needs both the reads and the time, and names the last mismatch.
    #[test]
    fn window_rule() {
        let rule = WindowRule {
            reads_min: 10,
            duration_min: Duration::from_secs(60),
        };
        let report = |matched, start_ms| ShadowReport {
            totals: Counts::default(),
            window_start: Timestamp(start_ms),
            window_matched: matched,
            last_mismatches: Vec::new(),
        };
        let now = Timestamp(1_000_000);
        assert!(rule.unmet(None, now).is_some());
        assert!(rule.unmet(Some(&report(9, 0)), now).is_some());
        assert!(rule
            .unmet(Some(&report(10, 1_000_000 - 59_000)), now)
            .is_some());
        assert_eq!(rule.unmet(Some(&report(10, 1_000_000 - 60_000)), now), None);
    }
}
