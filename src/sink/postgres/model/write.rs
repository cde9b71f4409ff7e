//! Writing a projection's entries back as rows, set-based: a few statements per table.

use super::*;

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
        write_erasures(conn, projection, keys).await?;
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

pub(super) async fn delete_keyed(
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

/// The erasure marks a batch set (a mark is never removed: the log holds the erasure).
pub(super) async fn write_erasures(
    conn: &mut PgConnection,
    projection: &Projection,
    keys: &Keys,
) -> Result<(), PgError> {
    let (mut bots, mut kinds, mut ids, mut positions) = (vec![], vec![], vec![], vec![]);
    for (bot_id, kind, id) in &keys.erasures {
        if let Some(position) = projection.erasure(bot_id, *kind, *id) {
            bots.push(bot_id.to_string());
            kinds.push(kind.as_str());
            ids.push(*id);
            positions.push(counter(position.0));
        }
    }
    if bots.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO erasures (bot_id, kind, subject_id, position) SELECT b, k, i, p FROM \
         UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[]) AS t(b, k, i, p) \
         ON CONFLICT (bot_id, kind, subject_id) DO UPDATE SET position = EXCLUDED.position",
    )
    .bind(bots)
    .bind(kinds)
    .bind(ids)
    .bind(positions)
    .execute(&mut *conn)
    .await
    .map_err(query_error("write erasures"))?;
    Ok(())
}

pub(super) async fn write_users(
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

pub(super) async fn write_profiles(
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

pub(super) async fn write_conversations(
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

pub(super) async fn write_configuration(
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

pub(super) async fn write_analytics(
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
