-- Idempotent writes: a resumed run re-emits the events of the steps after its checkpoint, and writing them
-- again must give the rows that writing them once gives. So: one metric point per (run, key, step), one
-- transcript per (run, step, group, sample, validate), one checkpoint per (run, path); writers upsert (the
-- latest write wins). Existing duplicates are dropped first, keeping the latest of each. Also the run's
-- progress within its current phase (sft, grpo, eval) with that phase's own total.
-- Keep in step with ../postgres/20261126000001_idempotent.sql.

-- Metrics become a table clustered by (run_id, key, step): the key is unique and is also the order the
-- bucket scans read (it replaces the covering index metrics_run_key_step).
CREATE TABLE metrics_points (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    step INTEGER NOT NULL,
    wall_time INTEGER NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, key, step)
) WITHOUT ROWID;
INSERT INTO metrics_points (run_id, key, step, wall_time, value)
SELECT run_id, key, step, wall_time, value FROM metrics
WHERE id IN (SELECT MAX(id) FROM metrics GROUP BY run_id, key, step);
DROP TABLE metrics;
ALTER TABLE metrics_points RENAME TO metrics;

-- Block summaries counted the duplicates: rebuild them from the points (block = floor(step / 64)).
DELETE FROM metric_blocks;
INSERT INTO metric_blocks (run_id, key, block, first_step, last_step, min_value, max_value, cnt)
SELECT run_id, key, block, MIN(step), MAX(step), MIN(value), MAX(value), COUNT(*)
FROM (SELECT run_id, key, step, value,
             CASE WHEN step >= 0 THEN step / 64 ELSE (step - 63) / 64 END AS block
      FROM metrics) p
GROUP BY run_id, key, block;

DELETE FROM transcripts
WHERE id NOT IN (SELECT MAX(id) FROM transcripts GROUP BY run_id, step, grp, sample, validate);
CREATE UNIQUE INDEX transcripts_episode ON transcripts (run_id, step, grp, sample, validate);
-- The unique index starts with the same columns.
DROP INDEX transcripts_run_step;

DELETE FROM checkpoints WHERE id NOT IN (SELECT MAX(id) FROM checkpoints GROUP BY run_id, path);
CREATE UNIQUE INDEX checkpoints_run_path ON checkpoints (run_id, path);

ALTER TABLE runs ADD COLUMN phase TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN phase_step INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN phase_total INTEGER NOT NULL DEFAULT 0;
