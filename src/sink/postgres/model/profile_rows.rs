//! The profile rows as stored, with their summaries and facts, for verification.

use super::*;

/// Every `profiles` row as stored, with its summaries and facts (for verification: the scalar
/// columns and child tables are checked against the document, not derived from it).
#[derive(Debug, Clone)]
pub struct ProfileRow {
    /// The bot.
    pub bot_id: String,
    /// The chat.
    pub chat_id: i64,
    /// Every column and child table, as JSON.
    pub value: serde_json::Value,
}

/// Reads every profile row with its summaries and facts; child rows without a profile come back
/// as rows of their own, with a `value` counting the orphans.
///
/// # Errors
/// [`PgError::Query`] when the query fails.
pub async fn load_profile_rows(conn: &mut PgConnection) -> Result<Vec<ProfileRow>, PgError> {
    let rows: Vec<(String, i64, serde_json::Value)> = sqlx::query_as(
        "SELECT p.bot_id, p.chat_id, jsonb_build_object(\
           'document', p.document, 'name', p.name, 'message_count', p.message_count, \
           'last_activity', p.last_activity, 'previous_response_id', p.previous_response_id, \
           'summaries', COALESCE((SELECT jsonb_object_agg(s.analysis_id, s.summary) FROM \
             profile_summaries s WHERE s.bot_id = p.bot_id AND s.chat_id = p.chat_id), '{}'), \
           'facts', COALESCE((SELECT jsonb_object_agg(f.snapshot_id, f.facts) FROM profile_facts f \
             WHERE f.bot_id = p.bot_id AND f.chat_id = p.chat_id), '{}')) FROM profiles p \
         UNION ALL \
         SELECT bot_id, chat_id, jsonb_build_object('orphan_rows', count(*)) FROM (\
           SELECT bot_id, chat_id FROM profile_summaries UNION ALL \
           SELECT bot_id, chat_id FROM profile_facts) c WHERE NOT EXISTS (SELECT 1 FROM \
           profiles p WHERE p.bot_id = c.bot_id AND p.chat_id = c.chat_id) GROUP BY bot_id, chat_id",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(query_error("load profile rows"))?;
    Ok(rows
        .into_iter()
        .map(|(bot_id, chat_id, value)| ProfileRow {
            bot_id,
            chat_id,
            value,
        })
        .collect())
}

/// The JSON [`load_profile_rows`] gives for a profile stored exactly as `document` says, through
/// the mapping of what Postgres cannot hold ([`crate::sink::postgres::mapping`]).
pub fn profile_row_value(document: &ProfileDocument) -> serde_json::Value {
    let row = serde_json::json!({
        "document": document,
        "name": document.name,
        "message_count": counter(document.message_count),
        "last_activity": document.last_activity,
        "previous_response_id": document.previous_response_id,
        "summaries": document.summary,
        "facts": document.profile,
    });
    // The row's own keys hold no character the mapping changes, so mapping the whole value maps
    // exactly the stored texts and documents inside it.
    json_in(&row).into_owned()
}
