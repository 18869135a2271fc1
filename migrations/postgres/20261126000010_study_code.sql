-- A study's fixed completion code (Prolific studies often use one code per study); '' = a random code per
-- session. Sessions still store their own random code: it marks the code as handed out, once.
-- Keep in step with the other dialect's file of the same name.
ALTER TABLE studies ADD COLUMN completion_code TEXT NOT NULL DEFAULT '';
