-- The MySQL migration shrinks the history tables' compressed pages (SPEC §6.1).
-- SQLite has no page compression; the number is kept so both sets stay in step.
SELECT 1;
