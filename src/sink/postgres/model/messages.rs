//! The `messages` table: rows from events, every row, the last N of a chat.

use super::*;

/// Message rows for the `messages` table, gathered from a batch of events.
#[derive(Debug, Default)]
pub struct MessageRows(Vec<MessageRow>);

impl MessageRows {
    /// Adds the message `recorded` carries, if it is a message on a conversation stream.
    pub fn push(&mut self, recorded: &RecordedEvent) {
        self.0.extend(MessageRow::from_event(recorded));
    }

    /// Drops the messages a clear in `projection` removed (those of a chat below its
    /// `cleared_before`).
    pub fn retain_uncleared(&mut self, projection: &Projection) {
        self.0.retain(|row| {
            let cleared = BotId::new(row.bot_id.as_str())
                .ok()
                .and_then(|bot_id| projection.conversation(&bot_id, row.chat_id))
                .map_or(0, |c| counter(c.head.cleared_before.0));
            row.position >= cleared
        });
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Inserts the rows (one statement).
    ///
    /// # Errors
    /// [`PgError::Query`] when the insert fails (a row already present is a bug: exactly once).
    pub async fn insert(self, conn: &mut PgConnection) -> Result<(), PgError> {
        if self.is_empty() {
            return Ok(());
        }
        let n = self.0.len();
        let (mut bots, mut chats, mut positions, mut directions) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut texts, mut at, mut legacy_ts) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for row in self.0 {
            bots.push(row.bot_id);
            chats.push(row.chat_id);
            positions.push(row.position);
            directions.push(row.direction);
            texts.push(row.text);
            at.push(row.at);
            legacy_ts.push(row.legacy_ts);
        }
        sqlx::query(
            "INSERT INTO messages (bot_id, chat_id, position, direction, text, at, legacy_ts) \
             SELECT b, c, p, d, t, a, l FROM UNNEST($1::text[], $2::int8[], $3::int8[], \
             $4::text[], $5::text[], $6::int8[], $7::jsonb[]) AS x(b, c, p, d, t, a, l)",
        )
        .bind(bots)
        .bind(chats)
        .bind(positions)
        .bind(directions)
        .bind(texts)
        .bind(at)
        .bind(legacy_ts)
        .execute(&mut *conn)
        .await
        .map_err(query_error("write messages"))?;
        Ok(())
    }
}

/// `in` or `out`, as the `messages.direction` column has it.
pub fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::In => "in",
        Direction::Out => "out",
    }
}

/// One row of the `messages` table, as stored (texts through [`crate::sink::postgres::mapping`]).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct MessageRow {
    /// The bot.
    pub bot_id: String,
    /// The chat.
    pub chat_id: i64,
    /// The event's position.
    pub position: i64,
    /// `in` or `out`.
    pub direction: String,
    /// The text.
    pub text: String,
    /// Milliseconds since the epoch.
    pub at: i64,
    /// An imported message's `ts`.
    pub legacy_ts: Option<serde_json::Value>,
}

impl MessageRow {
    /// The row an event makes, if it is a message on a conversation stream.
    pub fn from_event(recorded: &RecordedEvent) -> Option<MessageRow> {
        let message = MessageView::from_event(recorded)?;
        let chat_id = recorded.stream.key()?;
        (recorded.stream.kind() == StreamKind::Conversation).then(|| MessageRow {
            bot_id: recorded.bot_id.to_string(),
            chat_id,
            position: counter(message.position.0),
            direction: direction_name(message.direction).to_owned(),
            text: text_in(&message.text).into_owned(),
            at: message.at.0,
            legacy_ts: message.legacy_ts.map(|v| json_in(&v).into_owned()),
        })
    }
}

/// The last `limit` messages of a chat, oldest first, as the log projection has them (texts and
/// documents mapped back): "the last N of a chat" is a range of the table's key.
///
/// # Errors
/// [`PgError::Query`] when the query fails; [`PgError::BadRow`] for a row that is not a message.
pub async fn load_last_messages(
    conn: &mut PgConnection,
    bot_id: &BotId,
    chat_id: i64,
    limit: usize,
) -> Result<Vec<MessageView>, PgError> {
    let rows: Vec<(i64, String, String, i64, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT position, direction, text, at, legacy_ts FROM messages WHERE bot_id = $1 AND \
         chat_id = $2 ORDER BY position DESC LIMIT $3",
    )
    .bind(bot_id.as_str())
    .bind(chat_id)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await
    .map_err(query_error("load last messages"))?;
    let t = "messages";
    let mut messages = rows
        .into_iter()
        .map(|(position, direction, text, at, legacy_ts)| {
            let direction = match direction.as_str() {
                "in" => Direction::In,
                "out" => Direction::Out,
                other => {
                    return Err(PgError::BadRow {
                        table: t,
                        reason: format!("direction {other:?}"),
                    })
                }
            };
            Ok(MessageView {
                position: Position(uncounter(t, position)?),
                direction,
                text: Arc::from(unmap_text(t, text)?),
                at: Timestamp(at),
                legacy_ts: legacy_ts.map(|v| unmap_json(t, v)).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, PgError>>()?;
    messages.reverse();
    Ok(messages)
}

/// Every row of `messages`, ordered by position.
///
/// # Errors
/// [`PgError::Query`] when the query fails.
pub async fn load_messages(conn: &mut PgConnection) -> Result<Vec<MessageRow>, PgError> {
    sqlx::query_as(
        "SELECT bot_id, chat_id, position, direction, text, at AS at, legacy_ts FROM messages \
         ORDER BY position",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(query_error("load messages"))
}
