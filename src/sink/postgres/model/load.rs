//! Reading rows into a projection (only the entries a batch touches, or every row).

use super::*;

/// Reads the rows of the components in `projection.components()` into `projection` (which should
/// be empty). Message tails are not loaded: messages live in their own table and are compared
/// and written on their own.
///
/// # Errors
/// [`PgError::Query`] when a query fails; [`PgError::BadRow`] for a row that is not a valid entry.
pub async fn load(
    conn: &mut PgConnection,
    rows: Rows<'_>,
    projection: &mut Projection,
) -> Result<(), PgError> {
    let set = projection.components();
    if set.contains(Component::Users) {
        load_users(conn, rows, projection).await?;
        load_erasures(conn, rows, projection).await?;
    }
    if set.contains(Component::Profiles) {
        load_profiles(conn, rows, projection).await?;
    }
    if set.contains(Component::Conversations) {
        load_conversations(conn, rows, projection).await?;
    }
    if set.contains(Component::Configuration) {
        load_configuration(conn, rows, projection).await?;
    }
    if set.contains(Component::Analytics) {
        load_analytics(conn, rows, projection).await?;
    }
    Ok(())
}

/// `sql` restricted to the keys bound as `$1` (text[]) and `$2` when `keys` is given.
pub(super) fn with_filter(sql: &str, columns: &str, keyed: bool) -> String {
    if keyed {
        format!("{sql} WHERE ({columns}) IN (SELECT * FROM UNNEST($1::text[], $2::int8[]))")
    } else {
        sql.to_owned()
    }
}

pub(super) type UserRow = (
    String,
    i64,
    bool,
    Option<String>,
    serde_json::Value,
    serde_json::Value,
    i64,
);

/// The erasure marks (all of them, or those a batch sets).
pub(super) async fn load_erasures(
    conn: &mut PgConnection,
    rows: Rows<'_>,
    projection: &mut Projection,
) -> Result<(), PgError> {
    let sql = "SELECT bot_id, kind, subject_id, position FROM erasures";
    let found: Vec<(String, String, i64, i64)> = match rows {
        Rows::All => sqlx::query_as(sql).fetch_all(&mut *conn).await,
        Rows::Of(keys) => {
            if keys.erasures.is_empty() {
                return Ok(());
            }
            let (mut bots, mut kinds, mut ids) = (vec![], vec![], vec![]);
            for (bot_id, kind, id) in &keys.erasures {
                bots.push(bot_id.to_string());
                kinds.push(kind.as_str());
                ids.push(*id);
            }
            sqlx::query_as(
                "SELECT bot_id, kind, subject_id, position FROM erasures WHERE \
                 (bot_id, kind, subject_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[], \
                 $3::int8[]))",
            )
            .bind(bots)
            .bind(kinds)
            .bind(ids)
            .fetch_all(&mut *conn)
            .await
        }
    }
    .map_err(query_error("load erasures"))?;
    for (bot_id, kind, id, position) in found {
        let kind = match kind.as_str() {
            "chat" => SubjectKind::Chat,
            "user" => SubjectKind::User,
            other => {
                return Err(PgError::BadRow {
                    table: "erasures",
                    reason: format!("kind {other:?}"),
                })
            }
        };
        projection.insert_erasure(
            bot("erasures", bot_id)?,
            kind,
            id,
            Position(uncounter("erasures", position)?),
        );
    }
    Ok(())
}

pub(super) async fn load_users(
    conn: &mut PgConnection,
    rows: Rows<'_>,
    projection: &mut Projection,
) -> Result<(), PgError> {
    let sql = "SELECT bot_id, user_id, blocked, blocked_reason, identity, settings, registered_at \
               FROM users";
    let found: Vec<UserRow> = match rows {
        Rows::All => sqlx::query_as(sql).fetch_all(&mut *conn).await,
        Rows::Of(keys) => {
            if keys.users.is_empty() {
                return Ok(());
            }
            let (bots, ids) = split(&keys.users);
            sqlx::query_as(&with_filter(sql, "bot_id, user_id", true))
                .bind(bots)
                .bind(ids)
                .fetch_all(&mut *conn)
                .await
        }
    }
    .map_err(query_error("load users"))?;
    for (bot_id, user_id, blocked, blocked_reason, identity, settings, registered_at) in found {
        let identity: Identity = from_json("users", unmap_json("users", identity)?)?;
        let settings = match unmap_json("users", settings)? {
            serde_json::Value::Object(map) => map,
            other => {
                return Err(PgError::BadRow {
                    table: "users",
                    reason: format!("settings is not an object: {other}"),
                })
            }
        };
        projection.insert_user(
            bot("users", bot_id)?,
            UserView {
                user_id,
                blocked,
                blocked_reason: unmap_opt_text("users", blocked_reason)?,
                identity,
                settings,
                registered_at: Timestamp(registered_at),
            },
        );
    }
    Ok(())
}

pub(super) async fn load_profiles(
    conn: &mut PgConnection,
    rows: Rows<'_>,
    projection: &mut Projection,
) -> Result<(), PgError> {
    let sql = "SELECT bot_id, document FROM profiles";
    let found: Vec<(String, serde_json::Value)> = match rows {
        Rows::All => sqlx::query_as(sql).fetch_all(&mut *conn).await,
        Rows::Of(keys) => {
            if keys.profiles.is_empty() {
                return Ok(());
            }
            let (bots, ids) = split(&keys.profiles);
            sqlx::query_as(&with_filter(sql, "bot_id, chat_id", true))
                .bind(bots)
                .bind(ids)
                .fetch_all(&mut *conn)
                .await
        }
    }
    .map_err(query_error("load profiles"))?;
    for (bot_id, document) in found {
        let document: ProfileDocument = from_json("profiles", unmap_json("profiles", document)?)?;
        projection.insert_profile(bot("profiles", bot_id)?, document);
    }
    Ok(())
}

pub(super) type ConversationRow = (
    String,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    i64,
    i64,
    i64,
);

pub(super) type FollowupRow = (String, i64, String, i64);

pub(super) async fn load_conversations(
    conn: &mut PgConnection,
    rows: Rows<'_>,
    projection: &mut Projection,
) -> Result<(), PgError> {
    let heads = "SELECT bot_id, chat_id, messages_in, messages_out, last_in_at, last_out_at, unanswered, cleared_before, \
         retained FROM conversations";
    let followups = "SELECT bot_id, chat_id, followup_id, due_at FROM followups";
    let (found, due): (Vec<ConversationRow>, Vec<FollowupRow>) = match rows {
        Rows::All => (
            sqlx::query_as(heads)
                .fetch_all(&mut *conn)
                .await
                .map_err(query_error("load conversations"))?,
            sqlx::query_as(followups)
                .fetch_all(&mut *conn)
                .await
                .map_err(query_error("load followups"))?,
        ),
        Rows::Of(keys) => {
            if keys.conversations.is_empty() {
                return Ok(());
            }
            let (bots, ids) = split(&keys.conversations);
            (
                sqlx::query_as(&with_filter(heads, "bot_id, chat_id", true))
                    .bind(&bots)
                    .bind(&ids)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(query_error("load conversations"))?,
                sqlx::query_as(&with_filter(followups, "bot_id, chat_id", true))
                    .bind(&bots)
                    .bind(&ids)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(query_error("load followups"))?,
            )
        }
    };
    for (
        bot_id,
        chat,
        messages_in,
        messages_out,
        last_in,
        last_out,
        unanswered,
        cleared,
        retained,
    ) in found
    {
        let t = "conversations";
        projection.insert_conversation(
            bot(t, bot_id)?,
            chat,
            ConversationView {
                head: ConversationHead {
                    messages_in: uncounter(t, messages_in)?,
                    messages_out: uncounter(t, messages_out)?,
                    last_in_at: last_in.map(Timestamp),
                    last_out_at: last_out.map(Timestamp),
                    unanswered: uncounter(t, unanswered)?,
                    cleared_before: Position(uncounter(t, cleared)?),
                },
                tail: Default::default(),
                retained: uncounter(t, retained)?,
                followups: BTreeMap::new(),
            },
        );
    }
    for (bot_id, chat, followup_id, due_at) in due {
        projection
            .conversation_mut(bot("followups", bot_id)?, chat)
            .followups
            .insert(unmap_text("followups", followup_id)?, Timestamp(due_at));
    }
    Ok(())
}

pub(super) type ConfigRow = (String, String, String, serde_json::Value);

pub(super) async fn load_configuration(
    conn: &mut PgConnection,
    rows: Rows<'_>,
    projection: &mut Projection,
) -> Result<(), PgError> {
    let (values, states): (Vec<ConfigRow>, Vec<(String, String, String)>) = match rows {
        Rows::All => (
            sqlx::query_as("SELECT bot_id, scope, key, value FROM config_values")
                .fetch_all(&mut *conn)
                .await
                .map_err(query_error("load config_values"))?,
            sqlx::query_as("SELECT bot_id, component, state FROM component_states")
                .fetch_all(&mut *conn)
                .await
                .map_err(query_error("load component_states"))?,
        ),
        Rows::Of(keys) => {
            let (bots, (scopes, names)): (Vec<String>, (Vec<String>, Vec<String>)) = keys
                .config
                .iter()
                .map(|(b, s, k)| {
                    (
                        b.to_string(),
                        (text_in(s).into_owned(), text_in(k).into_owned()),
                    )
                })
                .unzip();
            let (state_bots, components): (Vec<String>, Vec<String>) = keys
                .components
                .iter()
                .map(|(b, c)| (b.to_string(), c.as_str().to_owned()))
                .unzip();
            (
                sqlx::query_as(
                    "SELECT bot_id, scope, key, value FROM config_values WHERE (bot_id, scope, key) \
                     IN (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]))",
                )
                .bind(bots)
                .bind(scopes)
                .bind(names)
                .fetch_all(&mut *conn)
                .await
                .map_err(query_error("load config_values"))?,
                sqlx::query_as(
                    "SELECT bot_id, component, state FROM component_states WHERE (bot_id, \
                     component) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))",
                )
                .bind(state_bots)
                .bind(components)
                .fetch_all(&mut *conn)
                .await
                .map_err(query_error("load component_states"))?,
            )
        }
    };
    for (bot_id, scope, key, value) in values {
        let t = "config_values";
        projection.insert_config_value(
            bot(t, bot_id)?,
            unmap_text(t, scope)?,
            unmap_text(t, key)?,
            unmap_json(t, value)?,
        );
    }
    for (bot_id, component, state) in states {
        let t = "component_states";
        let component: Component =
            component
                .parse()
                .map_err(|e: crate::InputError| PgError::BadRow {
                    table: t,
                    reason: e.to_string(),
                })?;
        let state: MigrationState = from_json(t, serde_json::Value::String(state))?;
        projection.insert_component_state(bot(t, bot_id)?, component, state);
    }
    Ok(())
}

pub(super) type DailyRow = (String, i64, i64, i64, i64, i64, i64);

pub(super) async fn load_analytics(
    conn: &mut PgConnection,
    rows: Rows<'_>,
    projection: &mut Projection,
) -> Result<(), PgError> {
    let daily = "SELECT bot_id, day, messages_in, messages_out, \
                 active_chats, llm_calls, llm_tokens FROM analytics_daily";
    let chats = "SELECT bot_id, day, chat_id FROM analytics_daily_chats";
    let day_filter = " WHERE (bot_id, day) IN (SELECT b, d \
                      FROM UNNEST($1::text[], $2::int8[]) AS k(b, d))";
    let (found, seen): (Vec<DailyRow>, Vec<(String, i64, i64)>) = match rows {
        Rows::All => (
            sqlx::query_as(daily)
                .fetch_all(&mut *conn)
                .await
                .map_err(query_error("load analytics_daily"))?,
            sqlx::query_as(chats)
                .fetch_all(&mut *conn)
                .await
                .map_err(query_error("load analytics_daily_chats"))?,
        ),
        Rows::Of(keys) => {
            if keys.days.is_empty() {
                return Ok(());
            }
            let (bots, days) = split(&keys.days);
            let (chat_bots, (chat_days, chat_ids)): (Vec<String>, (Vec<i64>, Vec<i64>)) = keys
                .day_chats
                .iter()
                .map(|(b, d, c)| (b.to_string(), (*d, *c)))
                .unzip();
            (
                sqlx::query_as(&format!("{daily}{day_filter}"))
                    .bind(&bots)
                    .bind(&days)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(query_error("load analytics_daily"))?,
                sqlx::query_as(&format!(
                    "{chats} WHERE (bot_id, day, chat_id) IN (SELECT b, \
                     d, c FROM UNNEST($1::text[], $2::int8[], $3::int8[]) AS k(b, d, c))"
                ))
                .bind(chat_bots)
                .bind(chat_days)
                .bind(chat_ids)
                .fetch_all(&mut *conn)
                .await
                .map_err(query_error("load analytics_daily_chats"))?,
            )
        }
    };
    let t = "analytics_daily";
    for (bot_id, day, messages_in, messages_out, active_chats, llm_calls, llm_tokens) in found {
        let counters = projection.daily_mut(bot(t, bot_id)?, day);
        counters.messages_in = uncounter(t, messages_in)?;
        counters.messages_out = uncounter(t, messages_out)?;
        counters.active_chats = uncounter(t, active_chats)?;
        counters.llm_calls = uncounter(t, llm_calls)?;
        counters.llm_tokens = uncounter(t, llm_tokens)?;
    }
    for (bot_id, day, chat) in seen {
        projection
            .daily_mut(bot("analytics_daily_chats", bot_id)?, day)
            .insert_chat(chat);
    }
    Ok(())
}
