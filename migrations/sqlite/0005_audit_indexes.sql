-- See the MySQL migration: two audit indexes repeated another. SQLite has no
-- RENAME INDEX: the kept ones are built again under the SPEC's names before
-- the old ones go (the claim is never without its unique key). The rowid
-- (`id`) ends every SQLite index entry, as InnoDB's primary key does.
DROP INDEX IF EXISTS idx_audit_fingerprint;
CREATE UNIQUE INDEX IF NOT EXISTS idx_audit_fingerprint ON event_audit_log (fingerprint, stage, claim);
DROP INDEX IF EXISTS uq_audit_claim;
DROP INDEX IF EXISTS idx_audit_record;
CREATE INDEX IF NOT EXISTS idx_audit_record ON event_audit_log (record_type, record_id, event_id);
DROP INDEX IF EXISTS idx_audit_record_event;
