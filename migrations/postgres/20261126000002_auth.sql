-- Admin auth (Postgres dialect). Keep in step with ../sqlite/20261126000002_auth.sql.

-- The one admin created by the first-run setup page (the id is always 1, so a second insert fails: setup can
-- only succeed once, even when two requests race). An admin password from the environment is never stored.
CREATE TABLE auth_admin (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    password_hash TEXT NOT NULL,   -- argon2 PHC string
    created_at BIGINT NOT NULL
);

-- Signed-in admin sessions. Only the SHA-256 of the cookie's token is stored: a copy of the database does not
-- hold a usable session.
CREATE TABLE auth_sessions (
    token_hash TEXT PRIMARY KEY,   -- lowercase hex SHA-256 of the cookie value
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ip TEXT NOT NULL DEFAULT '',
    user_agent TEXT NOT NULL DEFAULT ''
);
CREATE INDEX auth_sessions_expires ON auth_sessions (expires_at);
