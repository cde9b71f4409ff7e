-- 0002: every value the log holds fits the read models, and checkpoints know which log they mirror.
--
-- Times become milliseconds since the epoch (bigint), days the number of days since 1970-01-01
-- (bigint): timestamptz and date cannot hold every time the log holds (the log keeps any time the
-- bot wrote; timestamptz stops at 4713 BC and 294276 AD), and a read model must answer exactly
-- what the log projection answers. Columns keep their names; the values keep their meaning.
--
-- Texts and JSON documents keep their types: U+0000, which Postgres cannot store, is mapped by
-- the projector (see `src/sink/postgres/mapping.rs`): U+0000 is stored as U+E000 '0', and U+E000
-- itself as U+E000 U+E000. Rows written before this migration hold no U+0000 (the store refused
-- it then), but may hold U+E000: it is doubled here, so they read back unchanged. In jsonb the
-- character appears as itself in the text form (never escaped), so a replace on the text is
-- exact.

ALTER TABLE users
    ALTER COLUMN registered_at TYPE bigint
        USING round(extract(epoch FROM registered_at) * 1000)::bigint;

ALTER TABLE conversations
    ALTER COLUMN last_in_at TYPE bigint USING round(extract(epoch FROM last_in_at) * 1000)::bigint,
    ALTER COLUMN last_out_at TYPE bigint USING round(extract(epoch FROM last_out_at) * 1000)::bigint;

ALTER TABLE messages
    ALTER COLUMN at TYPE bigint USING round(extract(epoch FROM at) * 1000)::bigint;

ALTER TABLE followups
    ALTER COLUMN due_at TYPE bigint USING round(extract(epoch FROM due_at) * 1000)::bigint;

ALTER TABLE analytics_daily
    ALTER COLUMN day TYPE bigint USING (day - date '1970-01-01');

ALTER TABLE analytics_daily_chats
    ALTER COLUMN day TYPE bigint USING (day - date '1970-01-01');

-- The log the checkpoints belong to (its id, from the log's `log-id` file), and per component the
-- id of the last event applied (the event at next_position - 1). A projector refuses to run on
-- checkpoints of another log, past the log's end, or where the log now holds another event at
-- that position (a data directory restored from an older backup). NULL: nothing projected yet,
-- or projected before logs had ids (then only a rebuild with hybridstore-replay adopts the log).
ALTER TABLE projector_checkpoints
    ADD COLUMN log_id text,
    ADD COLUMN last_event_id text;

-- Existing U+E000 characters in the mapped columns become U+E000 U+E000.
UPDATE users SET
    blocked_reason = replace(blocked_reason, chr(57344), chr(57344) || chr(57344)),
    identity = replace(identity::text, chr(57344), chr(57344) || chr(57344))::jsonb,
    settings = replace(settings::text, chr(57344), chr(57344) || chr(57344))::jsonb
WHERE strpos(coalesce(blocked_reason, '') || identity::text || settings::text, chr(57344)) > 0;

UPDATE profiles SET
    name = replace(name, chr(57344), chr(57344) || chr(57344)),
    previous_response_id = replace(previous_response_id, chr(57344), chr(57344) || chr(57344)),
    last_activity = replace(last_activity::text, chr(57344), chr(57344) || chr(57344))::jsonb,
    document = replace(document::text, chr(57344), chr(57344) || chr(57344))::jsonb
WHERE strpos(document::text, chr(57344)) > 0;

UPDATE profile_summaries SET
    analysis_id = replace(analysis_id, chr(57344), chr(57344) || chr(57344)),
    summary = replace(summary, chr(57344), chr(57344) || chr(57344))
WHERE strpos(analysis_id || summary, chr(57344)) > 0;

UPDATE profile_facts SET
    snapshot_id = replace(snapshot_id, chr(57344), chr(57344) || chr(57344)),
    facts = replace(facts::text, chr(57344), chr(57344) || chr(57344))::jsonb
WHERE strpos(snapshot_id || facts::text, chr(57344)) > 0;

UPDATE messages SET
    text = replace(text, chr(57344), chr(57344) || chr(57344)),
    legacy_ts = replace(legacy_ts::text, chr(57344), chr(57344) || chr(57344))::jsonb
WHERE strpos(text || coalesce(legacy_ts::text, ''), chr(57344)) > 0;

UPDATE followups SET
    followup_id = replace(followup_id, chr(57344), chr(57344) || chr(57344))
WHERE strpos(followup_id, chr(57344)) > 0;

UPDATE config_values SET
    scope = replace(scope, chr(57344), chr(57344) || chr(57344)),
    key = replace(key, chr(57344), chr(57344) || chr(57344)),
    value = replace(value::text, chr(57344), chr(57344) || chr(57344))::jsonb
WHERE strpos(scope || key || value::text, chr(57344)) > 0;
