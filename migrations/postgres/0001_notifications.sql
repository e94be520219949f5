-- Notifications: the source of truth for everything a client is sent.
-- `message` is `json`, not `jsonb`: kept byte-for-byte as the backend sent it.
CREATE TABLE IF NOT EXISTS notifications (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    TEXT        NOT NULL,
    message    JSON        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    read       BOOLEAN     NOT NULL DEFAULT false
);

-- "all of a user after id X" (resume) and the listing API: a forward or backward
-- range scan within one user.
CREATE INDEX IF NOT EXISTS notifications_user_id_id ON notifications (user_id, id);

-- "the 50 newest unread" and the unread count: a partial index that holds unread
-- rows only, walked backwards; the count is an index-only scan. Messages are not
-- INCLUDEd: a 16 KiB message would exceed PostgreSQL's ~2.7 KB index tuple limit.
CREATE INDEX IF NOT EXISTS notifications_user_unread ON notifications (user_id, id) WHERE NOT read;
