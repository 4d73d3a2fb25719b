-- Issue 31 (the archive's least privilege): who recorded a segment and who
-- removed its rows, as the connecting users, so that the two roles of
-- sql/grants-mysql.sql (event_archive_recorder records a verified segment,
-- event_archiver removes what it covers) can be audited apart.
--
-- 0006's triggers wrote CURRENT_USER() into removed_by, which inside a
-- trigger is the trigger's DEFINER (the administrator who migrated), not
-- the user deleting: they are recreated with USER(), the connecting user.

ALTER TABLE archive_segments ADD COLUMN recorded_by VARCHAR(300) NULL;

-- Set by the database, whatever the INSERT says.
DROP TRIGGER IF EXISTS archive_segments_recorded_by;
CREATE TRIGGER archive_segments_recorded_by BEFORE INSERT ON archive_segments FOR EACH ROW
    SET NEW.recorded_by = USER();

DROP TRIGGER IF EXISTS events_immutable_delete;
CREATE TRIGGER events_immutable_delete BEFORE DELETE ON events FOR EACH ROW
BEGIN
    DECLARE seg CHAR(64) DEFAULT NULL;
    SET seg = (SELECT c.segment_id FROM archive_coverage c
        JOIN archive_segments s ON s.id = c.segment_id
        WHERE c.record_type = OLD.record_type AND c.record_id = OLD.record_id
          AND OLD.sequence_num BETWEEN c.from_seq AND c.to_seq LIMIT 1);
    IF seg IS NULL THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Event records are immutable and cannot be deleted.';
    END IF;
    UPDATE archive_segment_tables SET removed = removed + 1, removed_by = USER()
        WHERE segment_id = seg AND table_name = 'events';
    IF (SELECT removed > row_count FROM archive_segment_tables
        WHERE segment_id = seg AND table_name = 'events') IS NOT FALSE THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Event records are immutable and cannot be deleted.';
    END IF;
END;

DROP TRIGGER IF EXISTS audit_immutable_delete;
CREATE TRIGGER audit_immutable_delete BEFORE DELETE ON event_audit_log FOR EACH ROW
BEGIN
    DECLARE seg CHAR(64) DEFAULT NULL;
    SET seg = (SELECT c.segment_id FROM archive_coverage c
        JOIN archive_segments s ON s.id = c.segment_id
        WHERE OLD.record_type IS NOT NULL
          AND c.record_type = OLD.record_type AND c.record_id = OLD.record_id
          AND OLD.created_at < c.audit_before
          AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = OLD.event_id AND e.sequence_num > c.to_seq)
          AND NOT EXISTS (SELECT 1 FROM pending_events p
                          WHERE p.record_type = OLD.record_type AND p.record_id = OLD.record_id)
        ORDER BY c.audit_before LIMIT 1);
    IF seg IS NULL THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Event records are immutable and cannot be deleted.';
    END IF;
    UPDATE archive_segment_tables SET removed = removed + 1, removed_by = USER()
        WHERE segment_id = seg AND table_name = 'event_audit_log';
    IF (SELECT removed > row_count FROM archive_segment_tables
        WHERE segment_id = seg AND table_name = 'event_audit_log') IS NOT FALSE THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Event records are immutable and cannot be deleted.';
    END IF;
END;

DROP TRIGGER IF EXISTS merged_events_archive_delete;
CREATE TRIGGER merged_events_archive_delete BEFORE DELETE ON merged_events FOR EACH ROW
BEGIN
    DECLARE seg CHAR(64) DEFAULT NULL;
    SET seg = (SELECT c.segment_id FROM archive_coverage c
        JOIN archive_segments s ON s.id = c.segment_id
        WHERE c.record_type = OLD.record_type AND c.record_id = OLD.record_id
          AND OLD.sequence_num BETWEEN c.from_seq AND c.to_seq LIMIT 1);
    IF seg IS NULL THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Merged events leave only with a verified archive segment.';
    END IF;
    UPDATE archive_segment_tables SET removed = removed + 1, removed_by = USER()
        WHERE segment_id = seg AND table_name = 'merged_events';
END;
