-- See the MySQL migration: a record's audit rows by event id, and its rows
-- without one, from one small range.
CREATE INDEX IF NOT EXISTS idx_audit_record_event ON event_audit_log (record_type, record_id, event_id);
