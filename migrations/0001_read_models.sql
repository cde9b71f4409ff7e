-- The Postgres read models: a projection of the log, one table set per component.
--
-- Every row is derived from events; the projector writes them together with the component's
-- checkpoint in one transaction (`projector_checkpoints`), so each event takes effect exactly once.
-- `hybridstore-replay` rebuilds tables into fresh copies made with `LIKE ... INCLUDING ALL` and
-- swaps them in, so a table's indexes and constraints are declared here and nowhere else.
--
-- Times are `timestamptz` at millisecond precision (the log's `Timestamp`). Counters are the log
-- projection's u64 counters, clamped to bigint. Values the old bot kept as free JSON (a legacy
-- `last_activity`, an imported message's `ts`, settings, facts) are jsonb.
--
-- Released migrations are never edited: a schema change is a new file.

-- users: user by id (status, settings, identity).
CREATE TABLE users (
    bot_id         text        NOT NULL,
    user_id        bigint      NOT NULL,
    blocked        boolean     NOT NULL,
    blocked_reason text,
    identity       jsonb       NOT NULL,
    settings       jsonb       NOT NULL,
    registered_at  timestamptz NOT NULL,
    PRIMARY KEY (bot_id, user_id)
);

-- profiles: the chat partner's profile as the old `girls_data/{chat}.json` document had it.
-- `document` is that document whole (what the bot reads); the scalar columns and the two tables
-- below hold the same data for SQL.
CREATE TABLE profiles (
    bot_id               text   NOT NULL,
    chat_id              bigint NOT NULL,
    name                 text   NOT NULL,
    message_count        bigint NOT NULL,
    last_activity        jsonb,
    previous_response_id text,
    document             jsonb  NOT NULL,
    PRIMARY KEY (bot_id, chat_id)
);

-- Conversation analyses (the document's `summary`): analysis id -> summary.
CREATE TABLE profile_summaries (
    bot_id      text   NOT NULL,
    chat_id     bigint NOT NULL,
    analysis_id text   NOT NULL,
    summary     text   NOT NULL,
    PRIMARY KEY (bot_id, chat_id, analysis_id)
);

-- Fact snapshots (the document's `profile`): snapshot id -> facts.
CREATE TABLE profile_facts (
    bot_id      text   NOT NULL,
    chat_id     bigint NOT NULL,
    snapshot_id text   NOT NULL,
    facts       jsonb  NOT NULL,
    PRIMARY KEY (bot_id, chat_id, snapshot_id)
);

-- conversations: the head of each chat (counts, last activity, where history was cleared).
CREATE TABLE conversations (
    bot_id         text        NOT NULL,
    chat_id        bigint      NOT NULL,
    messages_in    bigint      NOT NULL,
    messages_out   bigint      NOT NULL,
    last_in_at     timestamptz,
    last_out_at    timestamptz,
    unanswered     bigint      NOT NULL,
    -- Messages before this log position were cleared (HistoryCleared, UserErased).
    cleared_before bigint      NOT NULL,
    -- Messages since the last clear.
    retained       bigint      NOT NULL,
    PRIMARY KEY (bot_id, chat_id)
);

-- Every message since the chat's last clear. The key makes "the last N messages of a chat" an
-- index range scan: WHERE bot_id = $1 AND chat_id = $2 ORDER BY position DESC LIMIT N.
CREATE TABLE messages (
    bot_id    text        NOT NULL,
    chat_id   bigint      NOT NULL,
    position  bigint      NOT NULL,
    direction text        NOT NULL CHECK (direction IN ('in', 'out')),
    text      text        NOT NULL,
    at        timestamptz NOT NULL,
    legacy_ts jsonb,
    PRIMARY KEY (bot_id, chat_id, position)
);

-- Follow-ups scheduled and not yet fired or cancelled.
CREATE TABLE followups (
    bot_id      text        NOT NULL,
    chat_id     bigint      NOT NULL,
    followup_id text        NOT NULL,
    due_at      timestamptz NOT NULL,
    PRIMARY KEY (bot_id, chat_id, followup_id)
);

-- configuration: key/value settings per scope.
CREATE TABLE config_values (
    bot_id text  NOT NULL,
    scope  text  NOT NULL,
    key    text  NOT NULL,
    value  jsonb NOT NULL,
    PRIMARY KEY (bot_id, scope, key)
);

-- configuration: each component's migration state (absent = disabled).
CREATE TABLE component_states (
    bot_id    text NOT NULL,
    component text NOT NULL,
    state     text NOT NULL,
    PRIMARY KEY (bot_id, component)
);

-- analytics: daily counters (UTC days).
CREATE TABLE analytics_daily (
    bot_id       text   NOT NULL,
    day          date   NOT NULL,
    messages_in  bigint NOT NULL,
    messages_out bigint NOT NULL,
    active_chats bigint NOT NULL,
    llm_calls    bigint NOT NULL,
    llm_tokens   bigint NOT NULL,
    PRIMARY KEY (bot_id, day)
);

-- analytics: the chats with a message on a day (what `active_chats` counts).
CREATE TABLE analytics_daily_chats (
    bot_id  text   NOT NULL,
    day     date   NOT NULL,
    chat_id bigint NOT NULL,
    PRIMARY KEY (bot_id, day, chat_id)
);

-- Where each component's projection stands: every event below `next_position` has taken effect
-- in the component's tables, and none at or above it. Written in the same transaction as the
-- rows it describes.
--
-- Every component has its row from the start: projectors and rebuilds serialize on these rows
-- (`SELECT ... FOR UPDATE`), and a row that does not exist yet cannot be locked. A component
-- added later gets its row in the migration that adds it.
CREATE TABLE projector_checkpoints (
    component     text        PRIMARY KEY,
    next_position bigint      NOT NULL CHECK (next_position >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO projector_checkpoints (component, next_position) VALUES
    ('users', 0), ('profiles', 0), ('configuration', 0), ('conversations', 0), ('analytics', 0);
