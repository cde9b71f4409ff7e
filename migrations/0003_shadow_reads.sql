-- 0003: the outcomes of shadow reads (design §5, `dual-write`), per bot and component.
--
-- Every process that serves a component in `dual-write` adds its outcomes here (each flush adds
-- what it counted since the last), so the step `dual-write -> database-only`, decided by any
-- process, sees the reads of all of them. `window_start_ms` is when the current window began
-- (entering dual-write resets the row; a mismatch moves it to the mismatch), `window_matched` the
-- matching reads since then. `last_mismatches` holds the newest few, oldest first, each with both
-- values and both positions. Not a read model: the replay tool neither rebuilds nor swaps it.

CREATE TABLE shadow_reads (
    bot              text   NOT NULL,
    component        text   NOT NULL,
    window_start_ms  bigint NOT NULL,
    window_matched   bigint NOT NULL,
    matched          bigint NOT NULL,
    mismatched       bigint NOT NULL,
    lagging          bigint NOT NULL,
    errors           bigint NOT NULL,
    timeouts         bigint NOT NULL,
    last_mismatches  jsonb  NOT NULL DEFAULT '[]',
    PRIMARY KEY (bot, component)
);
