-- Idempotent writes (see ../sqlite/20261126000001_idempotent.sql): one metric point per (run, key, step), one
-- transcript per (run, step, group, sample, validate), one checkpoint per (run, path), the latest of existing
-- duplicates kept; and the run's progress within its current phase.

DELETE FROM metrics m USING metrics newer
WHERE m.run_id = newer.run_id AND m.key = newer.key AND m.step = newer.step AND m.id < newer.id;
-- Unique on the point, still covering the bucket scans' reads of value.
CREATE UNIQUE INDEX metrics_point ON metrics (run_id, key, step) INCLUDE (value);
DROP INDEX metrics_run_key_step;

DELETE FROM metric_blocks;
INSERT INTO metric_blocks (run_id, key, block, first_step, last_step, min_value, max_value, cnt)
SELECT run_id, key, block, MIN(step), MAX(step), MIN(value), MAX(value), COUNT(*)
FROM (SELECT run_id, key, step, value, CASE WHEN step >= 0 THEN step / 64 ELSE (step - 63) / 64 END AS block FROM metrics) p
GROUP BY run_id, key, block;

DELETE FROM transcripts t USING transcripts newer
WHERE t.run_id = newer.run_id AND t.step = newer.step AND t.grp = newer.grp AND t.sample = newer.sample
  AND t.validate = newer.validate AND t.id < newer.id;
CREATE UNIQUE INDEX transcripts_episode ON transcripts (run_id, step, grp, sample, validate);
DROP INDEX transcripts_run_step;

DELETE FROM checkpoints c USING checkpoints newer
WHERE c.run_id = newer.run_id AND c.path = newer.path AND c.id < newer.id;
CREATE UNIQUE INDEX checkpoints_run_path ON checkpoints (run_id, path);

ALTER TABLE runs ADD COLUMN phase TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN phase_step BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN phase_total BIGINT NOT NULL DEFAULT 0;
