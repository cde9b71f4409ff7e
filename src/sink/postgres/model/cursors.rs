//! The checkpoints: where each component's tables stand, on which log.

use super::*;

/// The checkpoint of each component that has one.
///
/// # Errors
/// [`PgError::Query`] when the query fails.
pub async fn checkpoints(
    conn: &mut PgConnection,
    lock: bool,
) -> Result<HashMap<Component, Position>, PgError> {
    let sql = if lock {
        "SELECT component, next_position FROM projector_checkpoints FOR UPDATE"
    } else {
        "SELECT component, next_position FROM projector_checkpoints"
    };
    let rows: Vec<(String, i64)> = sqlx::query_as(sql)
        .fetch_all(&mut *conn)
        .await
        .map_err(query_error("read checkpoints"))?;
    let mut found = HashMap::new();
    for (name, next) in rows {
        // A component this version does not know is left alone.
        if let Ok(component) = name.parse::<Component>() {
            found.insert(
                component,
                Position(uncounter("projector_checkpoints", next)?),
            );
        }
    }
    Ok(found)
}

/// The checkpoints as a sink's cursors, with the log they belong to (`lock`: `FOR UPDATE`).
///
/// # Errors
/// [`PgError::Query`] when the query fails; [`PgError::BadRow`] for an unreadable log or event
/// id, or checkpoints that name two logs.
pub async fn cursors(conn: &mut PgConnection, lock: bool) -> Result<Cursors, PgError> {
    let sql = if lock {
        "SELECT component, next_position, log_id, last_event_id FROM projector_checkpoints FOR \
         UPDATE"
    } else {
        "SELECT component, next_position, log_id, last_event_id FROM projector_checkpoints"
    };
    let rows: Vec<(String, i64, Option<String>, Option<String>)> = sqlx::query_as(sql)
        .fetch_all(&mut *conn)
        .await
        .map_err(query_error("read checkpoints"))?;
    let t = "projector_checkpoints";
    let bad = |reason: String| PgError::BadRow { table: t, reason };
    let mut cursors = Cursors::default();
    for (name, next, log, last_event) in rows {
        // A component this version does not know is left alone.
        let Ok(component) = name.parse::<Component>() else {
            continue;
        };
        if let Some(log) = log {
            let log: LogId = log
                .parse()
                .map_err(|e| bad(format!("log id of {component}: {e}")))?;
            if cursors.log.is_some_and(|other| other != log) {
                return Err(bad(format!(
                    "the checkpoints name two logs ({} and {log})",
                    cursors.log.map(|l| l.to_string()).unwrap_or_default()
                )));
            }
            cursors.log = Some(log);
        }
        let last_event = last_event
            .map(|id| {
                Uuid::parse_str(&id).map_err(|e| bad(format!("last event id of {component}: {e}")))
            })
            .transpose()?;
        let cursor = Cursor {
            next: Position(uncounter(t, next)?),
            last_event,
        };
        cursors.components.insert(component, cursor);
    }
    Ok(cursors)
}

/// Sets the checkpoint of each component of `set` to `cursor`, on the log `log`.
///
/// # Errors
/// [`PgError::Query`] when the statement fails.
pub async fn set_cursors(
    conn: &mut PgConnection,
    set: ComponentSet,
    log: LogId,
    cursor: Cursor,
) -> Result<(), PgError> {
    let names: Vec<String> = set.iter().map(|c| c.as_str().to_owned()).collect();
    sqlx::query(
        "INSERT INTO projector_checkpoints (component, next_position, log_id, last_event_id) \
         SELECT c, $2, $3, $4 FROM UNNEST($1::text[]) AS c ON CONFLICT (component) DO UPDATE SET \
         next_position = EXCLUDED.next_position, log_id = EXCLUDED.log_id, last_event_id = \
         EXCLUDED.last_event_id, updated_at = now()",
    )
    .bind(names)
    .bind(counter(cursor.next.0))
    .bind(log.to_string())
    .bind(cursor.last_event.map(|id| id.to_string()))
    .execute(&mut *conn)
    .await
    .map_err(query_error("write checkpoints"))?;
    Ok(())
}
