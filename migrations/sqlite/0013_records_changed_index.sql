-- docs/spec.md §4.2 (issue 32): records by when they last changed. See the
-- MySQL migration 0013.
CREATE INDEX IF NOT EXISTS idx_record_state_updated ON record_state (updated_at);
