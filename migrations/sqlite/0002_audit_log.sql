-- Every admin action (drain, undrain, tuning apply, refused attempts): who, what,
-- when, with which arguments, and how it ended. `at` is Unix ms.
CREATE TABLE IF NOT EXISTS audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    node    TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    args    TEXT    NOT NULL CHECK (json_valid(args)),
    result  TEXT    NOT NULL CHECK (json_valid(result)),
    caller  TEXT    NOT NULL
);
