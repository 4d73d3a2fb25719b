-- The MySQL migration takes the history tables back to 8 KiB compressed
-- pages (docs/spec.md §6.1). SQLite has no page compression; the number is
-- kept so both sets stay in step.
SELECT 1;
