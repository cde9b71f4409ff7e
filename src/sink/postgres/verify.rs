//! Verification: every read-model row against the log projection at the tables' checkpoint.
//!
//! The rows and checkpoints are read in one snapshot. For each group of components standing at
//! the same checkpoint, the log is projected up to it with the very `Projection` the store uses;
//! both sides are then rendered to the same keyed JSON entries and compared: entries missing from
//! Postgres, entries Postgres has and the log does not, entries that differ.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::ControlFlow;
use std::path::Path;

use hybridstore_wal::{Options, Position, Wal};
use serde_json::{json, Value};
use sqlx::{Connection as _, PgPool};

use super::model::{self, MessageRow, Rows};
use super::PgError;
use crate::ids::{Component, ComponentSet};
use crate::projection::{replay_log, Projection};

/// Opens the log of a data directory read-only (beside a live store, if one runs).
///
/// # Errors
/// [`PgError::NoLog`] when the directory holds no log, [`PgError::Store`] when it cannot be read.
pub fn open_log(data_dir: &Path) -> Result<Wal, PgError> {
    let dir = data_dir.join(crate::WAL_SUBDIR);
    if !dir.is_dir() {
        return Err(PgError::NoLog { dir });
    }
    Wal::open_read_only(&dir, Options::default()).map_err(|e| PgError::Store(e.into()))
}

/// One difference between Postgres and the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// The entry (`users demo/42`, `messages demo/7@1234`, …).
    pub entry: String,
    /// What the log projection says (`None`: the entry should not exist).
    pub expected: Option<Value>,
    /// What Postgres holds (`None`: the row is missing).
    pub found: Option<Value>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.expected, &self.found) {
            (Some(e), None) => write!(f, "missing in Postgres: {} = {e}", self.entry),
            (None, Some(found)) => write!(f, "not in the log: {} = {found}", self.entry),
            (Some(Value::Object(e)), Some(Value::Object(found))) => {
                // Only the fields that differ.
                let mut keys: Vec<&String> = e.keys().chain(found.keys()).collect();
                keys.sort();
                keys.dedup();
                let fields: Vec<String> = keys
                    .into_iter()
                    .filter(|k| e.get(*k) != found.get(*k))
                    .map(|k| {
                        let show =
                            |v: Option<&Value>| v.map_or("(absent)".into(), Value::to_string);
                        format!(
                            "{k}: Postgres has {}, the log says {}",
                            show(found.get(k)),
                            show(e.get(k))
                        )
                    })
                    .collect();
                write!(f, "differs: {}: {}", self.entry, fields.join("; "))
            }
            (Some(e), Some(found)) => {
                write!(
                    f,
                    "differs: {}: Postgres has {found}, the log says {e}",
                    self.entry
                )
            }
            (None, None) => write!(f, "{}", self.entry),
        }
    }
}

/// What a verification found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Each component and the checkpoint it was verified at.
    pub checkpoints: Vec<(Component, Position)>,
    /// Entries compared.
    pub entries: u64,
    /// The differences.
    pub differences: Vec<Difference>,
}

/// Compares the read models of `components` with the log of `data_dir`.
///
/// # Errors
/// When the log or the database cannot be read, or a checkpoint lies beyond the log's end.
pub async fn verify(
    pool: &PgPool,
    data_dir: &Path,
    components: ComponentSet,
) -> Result<VerifyReport, PgError> {
    let log = open_log(data_dir)?;
    // The end first, then the keys: a key made in between is in the key store read after.
    let log_end = log.durable_end();
    let keys = crate::crypto::Keyring::for_tool(data_dir, log.log_id(), true)
        .map_err(|e| PgError::Store(crate::StoreError::KeyStore(e)))?;
    let query = |what| move |error| PgError::Query { what, error };
    let mut conn = pool.acquire().await.map_err(query("connect"))?;
    let mut tx = conn.begin().await.map_err(query("begin"))?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(query("set isolation"))?;
    let checkpoints = model::checkpoints(&mut tx, false).await?;
    let mut stored = Projection::with_components(0, components);
    model::load(&mut tx, Rows::All, &mut stored).await?;
    let profile_rows = if components.contains(Component::Profiles) {
        model::load_profile_rows(&mut tx).await?
    } else {
        Vec::new()
    };
    let messages = if components.contains(Component::Conversations) {
        model::load_messages(&mut tx).await?
    } else {
        Vec::new()
    };
    tx.commit().await.map_err(query("commit"))?;

    let mut groups: HashMap<Position, ComponentSet> = HashMap::new();
    let mut report = VerifyReport::default();
    for component in components.iter() {
        let at = checkpoints.get(&component).copied().unwrap_or(Position(0));
        if at > log_end {
            return Err(PgError::CheckpointBeyondLog {
                component,
                checkpoint: at,
                log_end,
            });
        }
        report.checkpoints.push((component, at));
        let set = groups.entry(at).or_default();
        *set = set.with(component);
    }
    let mut expected_entries = BTreeMap::new();
    let mut expected_messages = Vec::new();
    for (at, set) in groups {
        let mut projection = Projection::with_components(0, set);
        let mut group_messages = Vec::new();
        replay_log(
            &log,
            Position(0),
            Some(at),
            &keys,
            |_| {},
            |event| {
                if set.contains(Component::Conversations) {
                    group_messages.extend(MessageRow::from_event(&event));
                }
                projection.apply_owned(event);
                ControlFlow::Continue(())
            },
        )?;
        // Messages of a chat below its last clear are gone from the table too.
        group_messages.retain(|row: &MessageRow| {
            let cleared = crate::BotId::new(row.bot_id.as_str())
                .ok()
                .and_then(|bot| projection.conversation(&bot, row.chat_id))
                .map_or(0, |c| c.head.cleared_before.0);
            u64::try_from(row.position).unwrap_or(0) >= cleared
        });
        expected_messages.extend(group_messages);
        expected_entries.extend(entries(&projection));
    }
    let mut found_entries = entries(&stored);
    // Profiles are compared row by row (columns, summaries, facts), not as the loaded document.
    found_entries.retain(|key, _| !key.starts_with("profiles "));
    for row in profile_rows {
        found_entries.insert(
            format!("profiles {}/{}", row.bot_id, row.chat_id),
            row.value,
        );
    }
    for row in messages {
        found_entries.insert(message_key(&row), message_value(&row));
    }
    for row in expected_messages {
        expected_entries.insert(message_key(&row), message_value(&row));
    }
    report.entries = expected_entries.len().max(found_entries.len()) as u64;
    for (entry, expected) in &expected_entries {
        match found_entries.remove(entry) {
            None => report.differences.push(Difference {
                entry: entry.clone(),
                expected: Some(expected.clone()),
                found: None,
            }),
            Some(found) if &found != expected => report.differences.push(Difference {
                entry: entry.clone(),
                expected: Some(expected.clone()),
                found: Some(found),
            }),
            Some(_) => {}
        }
    }
    for (entry, found) in found_entries {
        report.differences.push(Difference {
            entry,
            expected: None,
            found: Some(found),
        });
    }
    Ok(report)
}

fn message_key(row: &MessageRow) -> String {
    format!("messages {}/{}@{}", row.bot_id, row.chat_id, row.position)
}

fn message_value(row: &MessageRow) -> Value {
    json!({
        "direction": row.direction,
        "text": row.text,
        "at": crate::Timestamp(row.at).to_rfc3339(),
        "legacy_ts": row.legacy_ts,
    })
}

/// Every entry of a projection (message tails aside), keyed and rendered as JSON, so both sides
/// of the comparison go through the same rendering.
fn entries(projection: &Projection) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (bot, user) in projection.users_iter() {
        out.insert(
            format!("users {bot}/{}", user.user_id),
            serde_json::to_value(user).unwrap_or(Value::Null),
        );
    }
    for (bot, profile) in projection.profiles_iter() {
        out.insert(
            format!("profiles {bot}/{}", profile.chat_id),
            model::profile_row_value(profile),
        );
    }
    for (bot, chat, conversation) in projection.conversations_iter() {
        out.insert(
            format!("conversations {bot}/{chat}"),
            json!({
                "head": conversation.head,
                "retained": conversation.retained,
                "followups": conversation.followups,
            }),
        );
    }
    for (bot, scope, key, value) in projection.config_iter() {
        // Scope and key as a JSON array: `a/b` + `c` and `a` + `b/c` stay apart.
        out.insert(
            format!("config_values {bot}/{}", json!([scope, key])),
            value.clone(),
        );
    }
    for (bot, component, state) in projection.component_states_iter() {
        out.insert(
            format!("component_states {bot}/{component}"),
            serde_json::to_value(state).unwrap_or(Value::Null),
        );
    }
    for (bot, day, counters) in projection.analytics_iter() {
        let mut chats: Vec<i64> = counters.chats().collect();
        chats.sort_unstable();
        out.insert(
            format!(
                "analytics_daily {bot}/{}",
                crate::Timestamp::date_of_day(day)
            ),
            json!({ "counters": counters, "chats": chats }),
        );
    }
    out
}
