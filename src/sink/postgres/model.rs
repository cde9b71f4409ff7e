//! The read-model tables and the projection: which rows an event touches ([`Keys`]), reading rows
//! into a [`Projection`] ([`load`]), and writing a projection's entries back as rows ([`write()`]),
//! set-based (one statement per table, arrays bound through `UNNEST`), never a round trip per row.
//!
//! The tables hold exactly the log projection's state (plus every message since the last clear),
//! so the Postgres projector can run the very same `Projection::apply` as the log projection:
//! load the rows a batch touches, apply the batch, write the rows back. Equality with the log
//! projection then follows from the code being shared, and `hybridstore-replay --verify` checks it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use hybridstore_wal::{LogId, Position};
use sqlx::PgConnection;
use uuid::Uuid;

use super::mapping::{json_in, json_out, opt_text_in, opt_text_out, text_in, text_out};
use super::PgError;
use crate::events::{Identity, RecordedEvent};
use crate::ids::{BotId, Component, ComponentSet, MigrationState, StreamKind, Timestamp};
use crate::projection::{
    ConversationHead, ConversationView, Direction, Keys, MessageView, ProfileDocument, Projection,
    UserView,
};
use crate::sink::{Cursor, Cursors};

/// The tables of each component, in the order a rebuild creates them.
pub fn component_tables(component: Component) -> &'static [&'static str] {
    match component {
        Component::Users => &["users"],
        Component::Profiles => &["profiles", "profile_summaries", "profile_facts"],
        Component::Conversations => &["conversations", "messages", "followups"],
        Component::Configuration => &["config_values", "component_states"],
        Component::Analytics => &["analytics_daily", "analytics_daily_chats"],
    }
}

/// A u64 counter as a bigint: counters beyond i64::MAX (never reached by counting) are clamped.
fn counter(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn uncounter(table: &'static str, value: i64) -> Result<u64, PgError> {
    u64::try_from(value).map_err(|_| PgError::BadRow {
        table,
        reason: format!("negative counter {value}"),
    })
}

fn bot(table: &'static str, id: String) -> Result<BotId, PgError> {
    BotId::new(id).map_err(|e| PgError::BadRow {
        table,
        reason: e.to_string(),
    })
}

fn from_json<T: serde::de::DeserializeOwned>(
    table: &'static str,
    value: serde_json::Value,
) -> Result<T, PgError> {
    serde_json::from_value(value).map_err(|e| PgError::BadRow {
        table,
        reason: e.to_string(),
    })
}

fn unmap_text(table: &'static str, stored: String) -> Result<String, PgError> {
    text_out(stored).map_err(|e| PgError::BadRow {
        table,
        reason: e.to_string(),
    })
}

fn unmap_opt_text(table: &'static str, stored: Option<String>) -> Result<Option<String>, PgError> {
    opt_text_out(stored).map_err(|e| PgError::BadRow {
        table,
        reason: e.to_string(),
    })
}

fn unmap_json(
    table: &'static str,
    stored: serde_json::Value,
) -> Result<serde_json::Value, PgError> {
    json_out(stored).map_err(|e| PgError::BadRow {
        table,
        reason: e.to_string(),
    })
}

fn query_error(what: &'static str) -> impl FnOnce(sqlx::Error) -> PgError {
    move |error| PgError::Query { what, error }
}

fn split<T: Clone>(keys: &HashSet<(BotId, T)>) -> (Vec<String>, Vec<T>) {
    keys.iter().map(|(b, k)| (b.to_string(), k.clone())).unzip()
}

/// Which rows [`load`] reads.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// Every row (a rebuild resuming, a verification).
    All,
    /// The rows of these entries (a projector batch).
    Of(&'a Keys),
}

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
fn with_filter(sql: &str, columns: &str, keyed: bool) -> String {
    if keyed {
        format!("{sql} WHERE ({columns}) IN (SELECT * FROM UNNEST($1::text[], $2::int8[]))")
    } else {
        sql.to_owned()
    }
}

type UserRow = (
    String,
    i64,
    bool,
    Option<String>,
    serde_json::Value,
    serde_json::Value,
    i64,
);

async fn load_users(
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

async fn load_profiles(
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

type ConversationRow = (
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

type FollowupRow = (String, i64, String, i64);

async fn load_conversations(
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

type ConfigRow = (String, String, String, serde_json::Value);

async fn load_configuration(
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

type DailyRow = (String, i64, i64, i64, i64, i64, i64);

async fn load_analytics(
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

/// What the tables held of the touched entries before a batch, to write only what changed.
/// `None` (a rebuild flushing into fresh tables) rewrites every touched entry's child rows, and
/// leaves the messages of cleared histories to the rebuild, which deletes them all at once at
/// its end.
pub type Prior<'a> = Option<&'a Projection>;

/// Writes the entries of `keys` as `projection` has them (upserting present ones, deleting absent
/// ones) for the components of `projection.components()`. Set-based: a few statements per table
/// whatever the number of entries.
///
/// # Errors
/// [`PgError::Query`] when a statement fails.
pub async fn write(
    conn: &mut PgConnection,
    projection: &Projection,
    keys: &Keys,
    prior: Prior<'_>,
) -> Result<(), PgError> {
    let set = projection.components();
    if set.contains(Component::Users) {
        write_users(conn, projection, keys).await?;
    }
    if set.contains(Component::Profiles) {
        write_profiles(conn, projection, keys, prior).await?;
    }
    if set.contains(Component::Conversations) {
        write_conversations(conn, projection, keys, prior).await?;
    }
    if set.contains(Component::Configuration) {
        write_configuration(conn, projection, keys).await?;
    }
    if set.contains(Component::Analytics) {
        write_analytics(conn, projection, keys, prior).await?;
    }
    Ok(())
}

async fn delete_keyed(
    conn: &mut PgConnection,
    table: &str,
    what: &'static str,
    gone: &[(String, i64)],
) -> Result<(), PgError> {
    if gone.is_empty() {
        return Ok(());
    }
    let (bots, ids): (Vec<String>, Vec<i64>) = gone.iter().cloned().unzip();
    let key = if table == "users" {
        "user_id"
    } else {
        "chat_id"
    };
    sqlx::query(&format!(
        "DELETE FROM {table} WHERE (bot_id, {key}) IN (SELECT * FROM UNNEST($1::text[], $2::int8[]))"
    ))
    .bind(bots)
    .bind(ids)
    .execute(&mut *conn)
    .await
    .map_err(query_error(what))?;
    Ok(())
}

async fn write_users(
    conn: &mut PgConnection,
    projection: &Projection,
    keys: &Keys,
) -> Result<(), PgError> {
    let mut gone = Vec::new();
    let (mut bots, mut ids, mut blocked, mut reasons, mut identities, mut settings, mut at) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for (bot_id, user_id) in &keys.users {
        match projection.user(bot_id, *user_id) {
            None => gone.push((bot_id.to_string(), *user_id)),
            Some(user) => {
                bots.push(bot_id.to_string());
                ids.push(user.user_id);
                blocked.push(user.blocked);
                reasons.push(opt_text_in(user.blocked_reason.as_deref()));
                let identity = serde_json::to_value(&user.identity).expect("identity is JSON");
                identities.push(json_in(&identity).into_owned());
                let user_settings = serde_json::Value::Object(user.settings.clone());
                settings.push(json_in(&user_settings).into_owned());
                at.push(user.registered_at.0);
            }
        }
    }
    delete_keyed(conn, "users", "delete users", &gone).await?;
    if bots.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO users (bot_id, user_id, blocked, blocked_reason, identity, settings, \
         registered_at) SELECT b, u, bl, r, i, s, a FROM UNNEST($1::text[], $2::int8[], \
         $3::bool[], $4::text[], $5::jsonb[], $6::jsonb[], $7::int8[]) AS t(b, u, bl, r, i, s, a) \
         ON CONFLICT (bot_id, user_id) DO UPDATE SET blocked = EXCLUDED.blocked, \
         blocked_reason = EXCLUDED.blocked_reason, identity = EXCLUDED.identity, \
         settings = EXCLUDED.settings, registered_at = EXCLUDED.registered_at",
    )
    .bind(bots)
    .bind(ids)
    .bind(blocked)
    .bind(reasons)
    .bind(identities)
    .bind(settings)
    .bind(at)
    .execute(&mut *conn)
    .await
    .map_err(query_error("write users"))?;
    Ok(())
}

async fn write_profiles(
    conn: &mut PgConnection,
    projection: &Projection,
    keys: &Keys,
    prior: Prior<'_>,
) -> Result<(), PgError> {
    let mut gone = Vec::new();
    let mut rewritten_summaries = Vec::new();
    let mut rewritten_facts = Vec::new();
    let (mut bots, mut chats, mut names, mut counts, mut last, mut responses, mut documents) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut s_bots, mut s_chats, mut s_ids, mut s_texts) = (vec![], vec![], vec![], vec![]);
    let (mut f_bots, mut f_chats, mut f_ids, mut f_facts) = (vec![], vec![], vec![], vec![]);
    for (bot_id, chat) in &keys.profiles {
        let before = prior.and_then(|p| p.profile(bot_id, *chat));
        let Some(profile) = projection.profile(bot_id, *chat) else {
            gone.push((bot_id.to_string(), *chat));
            continue;
        };
        let bot_name = bot_id.to_string();
        bots.push(bot_name.clone());
        chats.push(*chat);
        names.push(text_in(&profile.name).into_owned());
        counts.push(counter(profile.message_count));
        last.push(
            profile
                .last_activity
                .as_ref()
                .map(|v| json_in(v).into_owned()),
        );
        responses.push(opt_text_in(profile.previous_response_id.as_deref()));
        let document = serde_json::to_value(profile).expect("profile is JSON");
        documents.push(json_in(&document).into_owned());
        if before.map(|b| &b.summary) != Some(&profile.summary) {
            rewritten_summaries.push((bot_name.clone(), *chat));
            for (id, text) in &profile.summary {
                s_bots.push(bot_name.clone());
                s_chats.push(*chat);
                s_ids.push(text_in(id).into_owned());
                s_texts.push(text_in(text).into_owned());
            }
        }
        if before.map(|b| &b.profile) != Some(&profile.profile) {
            rewritten_facts.push((bot_name.clone(), *chat));
            for (id, facts) in &profile.profile {
                f_bots.push(bot_name.clone());
                f_chats.push(*chat);
                f_ids.push(text_in(id).into_owned());
                f_facts.push(json_in(facts).into_owned());
            }
        }
    }
    rewritten_summaries.extend(gone.iter().cloned());
    rewritten_facts.extend(gone.iter().cloned());
    delete_keyed(conn, "profiles", "delete profiles", &gone).await?;
    delete_keyed(
        conn,
        "profile_summaries",
        "delete profile_summaries",
        &rewritten_summaries,
    )
    .await?;
    delete_keyed(
        conn,
        "profile_facts",
        "delete profile_facts",
        &rewritten_facts,
    )
    .await?;
    if !bots.is_empty() {
        sqlx::query(
            "INSERT INTO profiles (bot_id, chat_id, name, message_count, last_activity, \
             previous_response_id, document) SELECT * FROM UNNEST($1::text[], $2::int8[], \
             $3::text[], $4::int8[], $5::jsonb[], $6::text[], $7::jsonb[]) ON CONFLICT \
             (bot_id, chat_id) DO UPDATE SET name = EXCLUDED.name, message_count = \
             EXCLUDED.message_count, last_activity = EXCLUDED.last_activity, \
             previous_response_id = EXCLUDED.previous_response_id, document = EXCLUDED.document",
        )
        .bind(bots)
        .bind(chats)
        .bind(names)
        .bind(counts)
        .bind(last)
        .bind(responses)
        .bind(documents)
        .execute(&mut *conn)
        .await
        .map_err(query_error("write profiles"))?;
    }
    if !s_bots.is_empty() {
        sqlx::query(
            "INSERT INTO profile_summaries (bot_id, chat_id, analysis_id, summary) SELECT * FROM \
             UNNEST($1::text[], $2::int8[], $3::text[], $4::text[])",
        )
        .bind(s_bots)
        .bind(s_chats)
        .bind(s_ids)
        .bind(s_texts)
        .execute(&mut *conn)
        .await
        .map_err(query_error("write profile_summaries"))?;
    }
    if !f_bots.is_empty() {
        sqlx::query(
            "INSERT INTO profile_facts (bot_id, chat_id, snapshot_id, facts) SELECT * FROM \
             UNNEST($1::text[], $2::int8[], $3::text[], $4::jsonb[])",
        )
        .bind(f_bots)
        .bind(f_chats)
        .bind(f_ids)
        .bind(f_facts)
        .execute(&mut *conn)
        .await
        .map_err(query_error("write profile_facts"))?;
    }
    Ok(())
}

async fn write_conversations(
    conn: &mut PgConnection,
    projection: &Projection,
    keys: &Keys,
    prior: Prior<'_>,
) -> Result<(), PgError> {
    let mut gone = Vec::new();
    let mut rewritten_followups = Vec::new();
    let (mut bots, mut chats, mut ins, mut outs, mut last_in, mut last_out) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut unanswered, mut cleared, mut retained) = (vec![], vec![], vec![]);
    let (mut u_bots, mut u_chats, mut u_ids, mut u_due) = (vec![], vec![], vec![], vec![]);
    let (mut c_bots, mut c_chats, mut c_before) = (vec![], vec![], vec![]);
    for (bot_id, chat) in &keys.conversations {
        let before = prior.and_then(|p| p.conversation(bot_id, *chat));
        let Some(conversation) = projection.conversation(bot_id, *chat) else {
            gone.push((bot_id.to_string(), *chat));
            continue;
        };
        let head = &conversation.head;
        let bot_name = bot_id.to_string();
        bots.push(bot_name.clone());
        chats.push(*chat);
        ins.push(counter(head.messages_in));
        outs.push(counter(head.messages_out));
        last_in.push(head.last_in_at.map(|t| t.0));
        last_out.push(head.last_out_at.map(|t| t.0));
        unanswered.push(counter(head.unanswered));
        cleared.push(counter(head.cleared_before.0));
        retained.push(counter(conversation.retained));
        if prior.is_some()
            && before.map(|b| b.head.cleared_before) != Some(head.cleared_before)
            && head.cleared_before > Position(0)
        {
            c_bots.push(bot_name.clone());
            c_chats.push(*chat);
            c_before.push(counter(head.cleared_before.0));
        }
        if before.map(|b| &b.followups) != Some(&conversation.followups) {
            rewritten_followups.push((bot_name.clone(), *chat));
            for (id, due) in &conversation.followups {
                u_bots.push(bot_name.clone());
                u_chats.push(*chat);
                u_ids.push(text_in(id).into_owned());
                u_due.push(due.0);
            }
        }
    }
    rewritten_followups.extend(gone.iter().cloned());
    delete_keyed(conn, "conversations", "delete conversations", &gone).await?;
    delete_keyed(conn, "messages", "delete messages", &gone).await?;
    delete_keyed(conn, "followups", "delete followups", &rewritten_followups).await?;
    if !c_bots.is_empty() {
        // History cleared: the messages before the clear go (the rows of this batch's own
        // messages are written after this, and only those at or after the clear).
        sqlx::query(
            "DELETE FROM messages m USING UNNEST($1::text[], $2::int8[], $3::int8[]) AS c(b, ch, p) \
             WHERE m.bot_id = c.b AND m.chat_id = c.ch AND m.position < c.p",
        )
        .bind(c_bots)
        .bind(c_chats)
        .bind(c_before)
        .execute(&mut *conn)
        .await
        .map_err(query_error("clear messages"))?;
    }
    if !bots.is_empty() {
        sqlx::query(
            "INSERT INTO conversations (bot_id, chat_id, messages_in, messages_out, last_in_at, \
             last_out_at, unanswered, cleared_before, retained) SELECT b, c, i, o, li, lo, u, cb, \
             r FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], \
             $6::int8[], $7::int8[], $8::int8[], $9::int8[]) AS t(b, c, i, o, li, lo, u, cb, r) \
             ON CONFLICT (bot_id, chat_id) DO UPDATE SET messages_in = EXCLUDED.messages_in, \
             messages_out = EXCLUDED.messages_out, last_in_at = EXCLUDED.last_in_at, \
             last_out_at = EXCLUDED.last_out_at, unanswered = EXCLUDED.unanswered, \
             cleared_before = EXCLUDED.cleared_before, retained = EXCLUDED.retained",
        )
        .bind(bots)
        .bind(chats)
        .bind(ins)
        .bind(outs)
        .bind(last_in)
        .bind(last_out)
        .bind(unanswered)
        .bind(cleared)
        .bind(retained)
        .execute(&mut *conn)
        .await
        .map_err(query_error("write conversations"))?;
    }
    if !u_bots.is_empty() {
        sqlx::query(
            "INSERT INTO followups (bot_id, chat_id, followup_id, due_at) SELECT b, c, f, d \
             FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::int8[]) AS t(b, c, f, d)",
        )
        .bind(u_bots)
        .bind(u_chats)
        .bind(u_ids)
        .bind(u_due)
        .execute(&mut *conn)
        .await
        .map_err(query_error("write followups"))?;
    }
    Ok(())
}

async fn write_configuration(
    conn: &mut PgConnection,
    projection: &Projection,
    keys: &Keys,
) -> Result<(), PgError> {
    let (mut bots, mut scopes, mut names, mut values) = (vec![], vec![], vec![], vec![]);
    let (mut d_bots, mut d_scopes, mut d_names) = (vec![], vec![], vec![]);
    for (bot_id, scope, key) in &keys.config {
        match projection.config_value(bot_id, scope, key) {
            Some(value) => {
                bots.push(bot_id.to_string());
                scopes.push(text_in(scope).into_owned());
                names.push(text_in(key).into_owned());
                values.push(json_in(value).into_owned());
            }
            None => {
                d_bots.push(bot_id.to_string());
                d_scopes.push(text_in(scope).into_owned());
                d_names.push(text_in(key).into_owned());
            }
        }
    }
    if !d_bots.is_empty() {
        sqlx::query(
            "DELETE FROM config_values WHERE (bot_id, scope, key) IN (SELECT * FROM \
             UNNEST($1::text[], $2::text[], $3::text[]))",
        )
        .bind(d_bots)
        .bind(d_scopes)
        .bind(d_names)
        .execute(&mut *conn)
        .await
        .map_err(query_error("delete config_values"))?;
    }
    if !bots.is_empty() {
        sqlx::query(
            "INSERT INTO config_values (bot_id, scope, key, value) SELECT * FROM \
             UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[]) ON CONFLICT (bot_id, scope, \
             key) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(bots)
        .bind(scopes)
        .bind(names)
        .bind(values)
        .execute(&mut *conn)
        .await
        .map_err(query_error("write config_values"))?;
    }
    let (mut c_bots, mut components, mut states) = (vec![], vec![], vec![]);
    for (bot_id, component) in &keys.components {
        c_bots.push(bot_id.to_string());
        components.push(component.as_str().to_owned());
        let state = projection.component_state(bot_id, *component);
        states.push(
            serde_json::to_value(state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .expect("a migration state serializes to a string"),
        );
    }
    if !c_bots.is_empty() {
        sqlx::query(
            "INSERT INTO component_states (bot_id, component, state) SELECT * FROM \
             UNNEST($1::text[], $2::text[], $3::text[]) ON CONFLICT (bot_id, component) DO \
             UPDATE SET state = EXCLUDED.state",
        )
        .bind(c_bots)
        .bind(components)
        .bind(states)
        .execute(&mut *conn)
        .await
        .map_err(query_error("write component_states"))?;
    }
    Ok(())
}

async fn write_analytics(
    conn: &mut PgConnection,
    projection: &Projection,
    keys: &Keys,
    prior: Prior<'_>,
) -> Result<(), PgError> {
    let (mut bots, mut days, mut ins, mut outs, mut active, mut calls, mut tokens) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut s_bots, mut s_days, mut s_chats) = (vec![], vec![], vec![]);
    for (bot_id, day) in &keys.days {
        // Days only ever gain counts: a touched day is present after applying.
        let Some(counters) = projection.daily_by_day(bot_id, *day) else {
            continue;
        };
        bots.push(bot_id.to_string());
        days.push(*day);
        ins.push(counter(counters.messages_in));
        outs.push(counter(counters.messages_out));
        active.push(counter(counters.active_chats));
        calls.push(counter(counters.llm_calls));
        tokens.push(counter(counters.llm_tokens));
    }
    // Only the batch's own messages can add a (day, chat) pair.
    for (bot_id, day, chat) in &keys.day_chats {
        let seen = projection
            .daily_by_day(bot_id, *day)
            .is_some_and(|c| c.has_chat(*chat));
        let known = prior
            .and_then(|p| p.daily_by_day(bot_id, *day))
            .is_some_and(|c| c.has_chat(*chat));
        if seen && !known {
            s_bots.push(bot_id.to_string());
            s_days.push(*day);
            s_chats.push(*chat);
        }
    }
    if !bots.is_empty() {
        sqlx::query(
            "INSERT INTO analytics_daily (bot_id, day, messages_in, messages_out, active_chats, \
             llm_calls, llm_tokens) SELECT b, d, i, o, a, c, t FROM \
             UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], \
             $7::int8[]) AS x(b, d, i, o, a, c, t) ON CONFLICT (bot_id, day) DO UPDATE SET \
             messages_in = EXCLUDED.messages_in, messages_out = EXCLUDED.messages_out, \
             active_chats = EXCLUDED.active_chats, llm_calls = EXCLUDED.llm_calls, \
             llm_tokens = EXCLUDED.llm_tokens",
        )
        .bind(bots)
        .bind(days)
        .bind(ins)
        .bind(outs)
        .bind(active)
        .bind(calls)
        .bind(tokens)
        .execute(&mut *conn)
        .await
        .map_err(query_error("write analytics_daily"))?;
    }
    if !s_bots.is_empty() {
        // Without a prior (a rebuild's flush) a pair may have been written by an earlier chunk.
        sqlx::query(
            "INSERT INTO analytics_daily_chats (bot_id, day, chat_id) SELECT b, \
             d, c FROM UNNEST($1::text[], $2::int8[], $3::int8[]) AS x(b, d, c) \
             ON CONFLICT DO NOTHING",
        )
        .bind(s_bots)
        .bind(s_days)
        .bind(s_chats)
        .execute(&mut *conn)
        .await
        .map_err(query_error("write analytics_daily_chats"))?;
    }
    Ok(())
}

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

/// One row of the `messages` table, as stored (texts through [`super::mapping`]).
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
/// the mapping of what Postgres cannot hold ([`super::mapping`]).
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
