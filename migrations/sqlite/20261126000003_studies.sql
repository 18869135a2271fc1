-- Crowd studies, SQLite dialect. Times are Unix milliseconds; booleans are 0/1; a NULL score means NaN/unknown.
-- Keep in step with ../postgres/20261126000003_studies.sql (same tables, columns and meaning).

CREATE TABLE studies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    slug TEXT NOT NULL UNIQUE,
    tasks TEXT NOT NULL,            -- JSON array of {gym, task_id}
    split TEXT NOT NULL,
    models TEXT NOT NULL,           -- JSON array of model specs
    episodes_per_worker INTEGER NOT NULL,
    time_limit_s INTEGER NOT NULL,
    max_turns INTEGER NOT NULL,
    pay_note TEXT NOT NULL,
    instructions TEXT NOT NULL,
    consent_text TEXT NOT NULL,
    consent_version TEXT NOT NULL,
    platform TEXT NOT NULL,         -- prolific | mturk | direct
    completion_url TEXT NOT NULL,
    status TEXT NOT NULL,           -- draft | open | closed
    created_at INTEGER NOT NULL
);

-- One row per (study, platform, worker): entering the link again finds it (one session per worker). The
-- session token is never stored, only its SHA-256 (hex); the completion code is made once, on the server.
CREATE TABLE study_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id INTEGER NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    platform TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    study_ref TEXT NOT NULL,
    session_ref TEXT NOT NULL,
    submit_to TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,            -- consent | instructions | episodes | completed | expired
    consent_at INTEGER,
    consent_version TEXT,
    started_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    finished_at INTEGER,
    completion_code TEXT UNIQUE,
    excluded INTEGER NOT NULL DEFAULT 0,
    exclusion_reason TEXT NOT NULL DEFAULT '',
    excluded_at INTEGER,
    UNIQUE (study_id, platform, worker_id)
);

-- The episodes assigned to a session, in order; filled in when each ends.
CREATE TABLE study_episodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id INTEGER NOT NULL REFERENCES study_sessions (id) ON DELETE CASCADE,
    study_id INTEGER NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    gym TEXT NOT NULL,
    task_id TEXT NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,            -- assigned | running | ended
    score REAL,
    normalized REAL,
    success INTEGER NOT NULL DEFAULT 0,
    termination TEXT NOT NULL DEFAULT '',
    turns INTEGER NOT NULL DEFAULT 0,
    record TEXT,                    -- TranscriptRecord JSON once ended
    started_at INTEGER,
    finished_at INTEGER,
    UNIQUE (session_id, idx)
);
CREATE INDEX study_episodes_study ON study_episodes (study_id, model, gym);

-- Every answer a person gave: per-turn times and the duplicate-text check read these.
CREATE TABLE study_answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    episode_id INTEGER NOT NULL REFERENCES study_episodes (id) ON DELETE CASCADE,
    prompt_id INTEGER NOT NULL,
    answer TEXT NOT NULL,
    text TEXT NOT NULL,
    elapsed_ms INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (episode_id, prompt_id)
);
