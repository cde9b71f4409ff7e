-- 0002: every value the log holds fits the read models, and checkpoints know which log they mirror.
--
-- Times become milliseconds since the epoch (bigint), days the number of days since 1970-01-01
-- (bigint): timestamptz and date cannot hold every time the log holds (the log keeps any time the
-- bot wrote; timestamptz stops at 4713 BC and 294276 AD), and a read model must answer exactly
-- what the log projection answers. Columns keep their names; the values keep their meaning.
--
-- Texts and JSON documents keep their types: U+0000, which Postgres cannot store, is mapped by
-- the projector (see `src/sink/postgres/mapping.rs`).

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
