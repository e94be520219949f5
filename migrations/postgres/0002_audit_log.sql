-- Every admin action (drain, undrain, tuning apply, refused attempts): who, what,
-- when, with which arguments, and how it ended.
CREATE TABLE IF NOT EXISTS audit_log (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    node    TEXT        NOT NULL,
    action  TEXT        NOT NULL,
    args    JSON        NOT NULL,
    result  JSON        NOT NULL,
    caller  TEXT        NOT NULL
);
