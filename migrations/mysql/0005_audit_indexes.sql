-- SPEC §6.1: fewer bytes per event (docs/capacity.md, "Bytes per event").
-- `bench storage` measured 2,793 of 4,138 bytes per event in the audit log,
-- 1,780 of them in five secondary indexes over 3 rows per event. Two of
-- them repeated another:
-- - idx_audit_fingerprint (fingerprint) is the first column of the claim
--   key (fingerprint, stage, claim), which answers every lookup by
--   fingerprint as well; the claim key takes the SPEC's name.
-- - idx_audit_record (record_type, record_id, id) and idx_audit_record_event
--   (record_type, record_id, event_id) answer the same range, a record's
--   rows; InnoDB appends the primary key to every secondary index, so the
--   second one is (record_type, record_id, event_id, id) and serves both
--   (`explain` sorts one record's rows by id). It takes the SPEC's name.
-- In place and without a lock (LOCK=NONE refuses rather than block writers).
ALTER TABLE event_audit_log DROP INDEX idx_audit_fingerprint, DROP INDEX idx_audit_record,
    ALGORITHM=INPLACE, LOCK=NONE;
ALTER TABLE event_audit_log RENAME INDEX uq_audit_claim TO idx_audit_fingerprint,
    RENAME INDEX idx_audit_record_event TO idx_audit_record, ALGORITHM=INPLACE, LOCK=NONE;
