-- Issue 31 (the archive's least privilege): who recorded a segment. SQLite
-- has no users (the embedded default runs as one process): the column is
-- here so both schemas read alike; MySQL's migration 0010 fills it.
ALTER TABLE archive_segments ADD COLUMN recorded_by TEXT NULL;
