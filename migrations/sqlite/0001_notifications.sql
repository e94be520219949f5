-- Notifications: the source of truth for everything a client is sent.
-- AUTOINCREMENT: ids are never reused, even after the newest row is deleted, so a
-- client's `after` can never skip a later notification. created_at is Unix ms.
CREATE TABLE IF NOT EXISTS notifications (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    TEXT    NOT NULL,
    message    TEXT    NOT NULL CHECK (json_valid(message)),
    created_at INTEGER NOT NULL,
    read       INTEGER NOT NULL DEFAULT 0 CHECK (read IN (0, 1))
);

-- Resume ("after X") and listings: a range scan within one user.
CREATE INDEX IF NOT EXISTS notifications_user_id_id ON notifications (user_id, id);

-- The newest unread and the unread count: a partial index of unread rows only.
CREATE INDEX IF NOT EXISTS notifications_user_unread ON notifications (user_id, id) WHERE read = 0;
