-- Live episodes with a person as the user (the chat page's "play a gym"; crowd studies point at them): the
-- run-less home of their transcripts. `record` is a TranscriptRecord JSON, the shape the transcripts table keeps;
-- the other columns are read from it (plus who started it and which model played the agent).
-- Keep in step with the other dialect's file of the same name.
CREATE TABLE episodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    origin TEXT NOT NULL,          -- chat, study:<slug>, ...
    model TEXT NOT NULL,
    user_kind TEXT NOT NULL,       -- human
    gym TEXT NOT NULL,
    task_id TEXT NOT NULL,
    reward REAL,                   -- sum of the turn rewards; NULL = NaN
    normalized REAL,
    success INTEGER NOT NULL,
    termination TEXT NOT NULL,
    turns INTEGER NOT NULL,
    record TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER NOT NULL
);
CREATE INDEX episodes_origin ON episodes (origin, id);
