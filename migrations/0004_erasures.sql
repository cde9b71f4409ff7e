-- 0004: erasure marks (design §10). A subject (a chat partner, or a user) erased at `position`:
-- the rows of their data are gone, and a read of them says "erased", not "absent". A mark stays
-- when the subject comes back (a new message after the erasure); a read then answers the new
-- data. Part of the users component's tables (rebuilt and swapped with them).

CREATE TABLE erasures (
    bot_id      text   NOT NULL,
    kind        text   NOT NULL CHECK (kind IN ('chat', 'user')),
    subject_id  bigint NOT NULL,
    position    bigint NOT NULL,
    PRIMARY KEY (bot_id, kind, subject_id)
);
