//! Step 4 of a rebuild: the atomic swap of the staging tables into the live schema, and the
//! log's adoption (the checkpoints take this log's id and last event id).

use std::time::Duration;

use anyhow::{bail, Context as _};
use hybridstore::ids::{Component, ComponentSet};
use hybridstore::sink::postgres::model::{self, component_tables};
use hybridstore::sink::Cursor;
use hybridstore_wal::{LogId, Position};
use sqlx::{Connection as _, PgConnection};

use crate::rebuild::{DEFERRED_INDEX_TABLE, STAGING_SCHEMA};

/// Step 4: the atomic swap. Returns the rows in the swapped-in tables.
pub(crate) async fn swap_in(
    conn: &mut PgConnection,
    live: &str,
    components: ComponentSet,
    log_id: LogId,
    cursor: Cursor,
) -> anyhow::Result<u64> {
    let tables: Vec<&str> = components
        .iter()
        .flat_map(|c| component_tables(c).iter().copied())
        .collect();
    if components.contains(Component::Conversations) {
        finish_messages(conn, live).await?;
    }
    // The swap waits for the live tables' readers and writers to finish, but not forever: a
    // long transaction holding them would otherwise queue every later reader behind the swap.
    let mut attempt = 0;
    let rows = loop {
        attempt += 1;
        match swap_once(conn, live, &tables, components, log_id, cursor).await {
            Ok(rows) => break rows,
            Err(error) if attempt < SWAP_ATTEMPTS && is_lock_timeout(&error) => {
                tracing::warn!(attempt, "the live tables stayed busy; retrying the swap");
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
            }
            Err(error) if is_lock_timeout(&error) => {
                return Err(error.context(format!(
                    "the live tables stayed locked by other sessions through {SWAP_ATTEMPTS} \
                     attempts; the rebuilt tables wait in {STAGING_SCHEMA}: run the same \
                     command again to swap them in"
                )))
            }
            Err(error) => return Err(error),
        }
    };
    tracing::info!("swap committed");
    for table in &tables {
        // The swap is done; fresh statistics only help the planner, so a failure is a warning.
        if let Err(error) = sqlx::query(&format!("ANALYZE {live}.{table}"))
            .execute(&mut *conn)
            .await
        {
            tracing::warn!(table, error = %hybridstore::sink::postgres::describe(&error), "ANALYZE failed");
        }
    }
    Ok(rows)
}

/// Attempts at the swap before giving up (each waits up to [`SWAP_LOCK_WAIT`] for the locks).
const SWAP_ATTEMPTS: u64 = 5;
/// How long one attempt at the swap waits for a lock.
const SWAP_LOCK_WAIT: &str = "5s";

fn is_lock_timeout(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .and_then(|e| e.as_database_error())
            .and_then(|db| db.code())
            .is_some_and(|code| code == "55P03")
            || cause
                .downcast_ref::<hybridstore::sink::postgres::PgError>()
                .is_some_and(|e| {
                    matches!(e, hybridstore::sink::postgres::PgError::Query { error, .. }
                        if error.as_database_error().and_then(|db| db.code()).is_some_and(|c| c == "55P03"))
                })
    })
}

/// One attempt at the swap's transaction.
async fn swap_once(
    conn: &mut PgConnection,
    live: &str,
    tables: &[&str],
    components: ComponentSet,
    log_id: LogId,
    cursor: Cursor,
) -> anyhow::Result<u64> {
    let mut tx = conn.begin().await.context("BEGIN")?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{SWAP_LOCK_WAIT}'"))
        .execute(&mut *tx)
        .await?;
    let counts: Vec<String> = tables
        .iter()
        .map(|t| format!("(SELECT count(*) FROM {STAGING_SCHEMA}.{t})"))
        .collect();
    let rows: i64 = sqlx::query_scalar(&format!("SELECT ({})::int8", counts.join(" + ")))
        .fetch_one(&mut *tx)
        .await
        .context("counting the rebuilt rows")?;
    // The projector takes its checkpoints first and the tables after: so does the swap, so the
    // two wait for each other instead of deadlocking.
    let standing = model::cursors(&mut tx, true).await?;
    // The database adopts this log. The components not rebuilt must follow it already (their
    // history is this log's) or stand at the start; otherwise the checkpoints would name two
    // histories.
    let others: Vec<Component> = ComponentSet::ALL
        .iter()
        .filter(|c| !components.contains(*c))
        .collect();
    let past_start: Vec<String> = others
        .iter()
        .filter(|c| standing.get(**c).next > Position(0))
        .map(|c| c.to_string())
        .collect();
    if !past_start.is_empty() {
        match standing.log {
            Some(other) if other != log_id => bail!(
                "the database's other components ({}) follow log {other}, not this log \
                 ({log_id}): rebuild every component (--component all) to adopt this log",
                past_start.join(", ")
            ),
            None => bail!(
                "the database's other components ({}) were projected before logs had ids, so \
                 nothing shows they follow this log ({log_id}): rebuild every component \
                 (--component all) to adopt it",
                past_start.join(", ")
            ),
            Some(_) => {}
        }
    }
    let live_tables: Vec<String> = tables.iter().map(|t| format!("{live}.{t}")).collect();
    sqlx::query(&format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        live_tables.join(", ")
    ))
    .execute(&mut *tx)
    .await
    .context("locking the live tables")?;
    for table in tables {
        copy_grants(&mut tx, live, table).await?;
        sqlx::query(&format!("DROP TABLE {live}.{table}"))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("dropping the old {table}"))?;
        sqlx::query(&format!(
            "ALTER TABLE {STAGING_SCHEMA}.{table} SET SCHEMA {live}"
        ))
        .execute(&mut *tx)
        .await
        .with_context(|| format!("moving the new {table} in"))?;
    }
    model::set_cursors(&mut tx, components, log_id, cursor).await?;
    // The other components that stand at the start adopt the log too (they follow it already
    // otherwise, as checked above).
    let at_start = ComponentSet::of(
        others
            .iter()
            .copied()
            .filter(|c| standing.get(*c).next == Position(0)),
    );
    if !at_start.is_empty() {
        model::set_cursors(&mut tx, at_start, log_id, Cursor::START).await?;
    }
    sqlx::query(&format!("DROP SCHEMA {STAGING_SCHEMA} CASCADE"))
        .execute(&mut *tx)
        .await
        .context("dropping the staging schema")?;
    tx.commit().await.context("COMMIT of the swap")?;
    Ok(u64::try_from(rows).unwrap_or(0))
}

/// Gives the staging table the privileges other roles hold on the live one (`LIKE` copies
/// columns, constraints and indexes, not grants), so the bot's readers keep their access.
async fn copy_grants(conn: &mut PgConnection, live: &str, table: &str) -> anyhow::Result<()> {
    let grants: Vec<String> = sqlx::query_scalar(
        "SELECT format('GRANT %s ON %I.%I TO %s', privilege_type, $3::text, table_name, \
         CASE WHEN grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(grantee) END) FROM \
         information_schema.role_table_grants WHERE table_schema = $1 AND table_name = $2 AND \
         grantee <> current_user",
    )
    .bind(live)
    .bind(table)
    .bind(STAGING_SCHEMA)
    .fetch_all(&mut *conn)
    .await
    .with_context(|| format!("reading the grants on {table}"))?;
    for grant in grants {
        sqlx::query(&grant)
            .execute(&mut *conn)
            .await
            .with_context(|| grant.clone())?;
    }
    Ok(())
}

/// Deletes the messages that clears removed (a rebuild defers that to here) and gives the
/// staging `messages` the live table's keys and indexes, as the migrations define them.
async fn finish_messages(conn: &mut PgConnection, live: &str) -> anyhow::Result<()> {
    let table = DEFERRED_INDEX_TABLE;
    let deleted = sqlx::query(&format!(
        "DELETE FROM {STAGING_SCHEMA}.{table} m USING {STAGING_SCHEMA}.conversations c WHERE \
         m.bot_id = c.bot_id AND m.chat_id = c.chat_id AND m.position < c.cleared_before"
    ))
    .execute(&mut *conn)
    .await
    .context("deleting cleared messages")?;
    tracing::info!(
        deleted = deleted.rows_affected(),
        "cleared messages deleted"
    );
    let constraints: Vec<(String, String)> = sqlx::query_as(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = \
         ($1 || '.' || $2)::regclass AND contype IN ('p', 'u', 'x')",
    )
    .bind(live)
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .context("reading the keys of messages")?;
    // A swap that failed after this ran leaves the keys built: a second run skips them.
    let built: Vec<String> = sqlx::query_scalar(
        "SELECT conname::text FROM pg_constraint WHERE conrelid = ($1 || '.' || $2)::regclass",
    )
    .bind(STAGING_SCHEMA)
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .context("reading the keys built so far")?;
    for (name, definition) in constraints.iter().filter(|(n, _)| !built.contains(n)) {
        sqlx::query(&format!(
            "ALTER TABLE {STAGING_SCHEMA}.{table} ADD CONSTRAINT {name} {definition}"
        ))
        .execute(&mut *conn)
        .await
        .with_context(|| {
            format!("building {name} (a duplicate key here means an event was applied twice)")
        })?;
    }
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = ($1 || '.' || \
         $2)::regclass AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = \
         i.indexrelid)",
    )
    .bind(live)
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .context("reading the indexes of messages")?;
    for definition in indexes {
        let definition = definition
            .replacen(
                &format!(" ON {live}.{table} "),
                &format!(" ON {STAGING_SCHEMA}.{table} "),
                1,
            )
            .replacen("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)
            .replacen(
                "CREATE UNIQUE INDEX ",
                "CREATE UNIQUE INDEX IF NOT EXISTS ",
                1,
            );
        sqlx::query(&definition)
            .execute(&mut *conn)
            .await
            .with_context(|| format!("building an index: {definition}"))?;
    }
    Ok(())
}
