-- Event history (`events list`, admin record endpoints): a record's audit
-- rows by event id, and its rows without one (duplicates, failed
-- executions), read from one small subtree instead of one random leaf of
-- idx_audit_event / idx_audit_fingerprint per event.
CREATE INDEX idx_audit_record_event ON event_audit_log (record_type, record_id, event_id);
