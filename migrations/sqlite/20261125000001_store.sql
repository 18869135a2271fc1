-- userrl store, SQLite dialect. Times are Unix milliseconds; booleans are 0/1; a NULL number means NaN.
-- Keep in step with ../postgres/20261125000001_store.sql (same tables, columns and meaning).

CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    gyms TEXT NOT NULL,            -- JSON array of gym names
    model TEXT NOT NULL,
    device TEXT NOT NULL,
    total_steps INTEGER NOT NULL,
    step INTEGER NOT NULL DEFAULT 0, -- largest step with a logged metric (kept by the writers)
    latest_reward REAL,            -- the `reward` metric at reward_step
    reward_step INTEGER,
    message TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER
);
CREATE INDEX runs_status ON runs (status);

-- Raw points. NaN is stored as NULL (SQLite cannot hold NaN); ties at one step resolve by id (later wins).
CREATE TABLE metrics (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    step INTEGER NOT NULL,
    wall_time INTEGER NOT NULL,
    value REAL
);
-- Covers the bucket scan: (run_id, key, step) ranges read value without touching the table.
CREATE INDEX metrics_run_key_step ON metrics (run_id, key, step, value);

-- Summaries of blocks of 64 consecutive steps (block = floor(step / 64)), kept by the writers, so a chart over a
-- long range reads one row per block instead of every point. min/max ignore NaN (NULL). Clustered by its key.
CREATE TABLE metric_blocks (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    block INTEGER NOT NULL,
    first_step INTEGER NOT NULL,
    last_step INTEGER NOT NULL,
    min_value REAL,
    max_value REAL,
    cnt INTEGER NOT NULL,
    PRIMARY KEY (run_id, key, block)
) WITHOUT ROWID;

-- The distinct keys of each run, so listing them does not scan the points.
CREATE TABLE metric_keys (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;

CREATE TABLE transcripts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    grp INTEGER NOT NULL,
    sample INTEGER NOT NULL,
    validate INTEGER NOT NULL,
    gym TEXT NOT NULL,
    task_id TEXT NOT NULL,
    reward REAL,
    normalized REAL,
    success INTEGER NOT NULL,
    termination TEXT NOT NULL,
    turns INTEGER NOT NULL,
    parse_failures INTEGER NOT NULL,
    record TEXT NOT NULL,          -- the trainer's JSON exactly as received
    created_at INTEGER NOT NULL
);
CREATE INDEX transcripts_run_step ON transcripts (run_id, step, grp, sample);
CREATE INDEX transcripts_run_gym ON transcripts (run_id, gym, step);

CREATE TABLE checkpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    path TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX checkpoints_run_step ON checkpoints (run_id, step);

CREATE TABLE evals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER REFERENCES runs (id) ON DELETE SET NULL,
    model TEXT NOT NULL,
    gym TEXT NOT NULL,
    user_kind TEXT NOT NULL,
    split TEXT NOT NULL,
    episodes INTEGER NOT NULL,
    mean_score REAL,
    normalized REAL,
    success_rate REAL,
    mean_turns REAL,
    created_at INTEGER NOT NULL
);
CREATE INDEX evals_model_gym ON evals (model, gym, user_kind, split);
