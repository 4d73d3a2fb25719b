-- SPEC §6.1: retention with archival (see the MySQL migration for the why).
CREATE TABLE IF NOT EXISTS archive_segments (
    id           TEXT    NOT NULL PRIMARY KEY,
    reference    TEXT    NOT NULL,
    bytes        INTEGER NOT NULL,
    cutoff       TEXT    NOT NULL,
    manifest     TEXT    NOT NULL,
    verified_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    removed_at   TEXT    NULL,
    restored_at  TEXT    NULL
);
CREATE TABLE IF NOT EXISTS archive_coverage (
    record_type  TEXT    NOT NULL,
    record_id    TEXT    NOT NULL,
    segment_id   TEXT    NOT NULL,
    from_seq     INTEGER NOT NULL,
    to_seq       INTEGER NOT NULL,
    audit_before TEXT    NOT NULL,
    PRIMARY KEY (record_type, record_id, segment_id)
);
CREATE INDEX IF NOT EXISTS idx_archive_coverage_segment ON archive_coverage (segment_id);
CREATE UNIQUE INDEX IF NOT EXISTS uq_archive_coverage_from ON archive_coverage (record_type, record_id, from_seq);
CREATE TABLE IF NOT EXISTS archive_segment_tables (
    segment_id  TEXT    NOT NULL,
    table_name  TEXT    NOT NULL,
    row_count   INTEGER NOT NULL,
    removed     INTEGER NOT NULL DEFAULT 0,
    removed_by  TEXT    NULL,
    PRIMARY KEY (segment_id, table_name)
);
CREATE TABLE IF NOT EXISTS archive_dead_letters (
    segment_id     TEXT    NOT NULL,
    dead_letter_id INTEGER NOT NULL,
    PRIMARY KEY (segment_id, dead_letter_id)
);

CREATE TABLE IF NOT EXISTS record_checkpoints (
    record_type  TEXT    NOT NULL,
    record_id    TEXT    NOT NULL,
    sequence_num INTEGER NOT NULL,
    version      INTEGER NOT NULL,
    state        TEXT    NOT NULL,
    segment_id   TEXT    NOT NULL,
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (record_type, record_id)
);

DROP TRIGGER IF EXISTS events_immutable_delete;
CREATE TRIGGER events_immutable_delete BEFORE DELETE ON events
WHEN NOT EXISTS (SELECT 1 FROM archive_coverage c JOIN archive_segments s ON s.id = c.segment_id
                 JOIN archive_segment_tables t ON t.segment_id = c.segment_id AND t.table_name = 'events'
                 WHERE c.record_type = OLD.record_type AND c.record_id = OLD.record_id
                   AND OLD.sequence_num BETWEEN c.from_seq AND c.to_seq AND t.removed < t.row_count)
BEGIN SELECT RAISE(ABORT, 'Event records are immutable and cannot be deleted.'); END;
CREATE TRIGGER events_archive_removal AFTER DELETE ON events
BEGIN
    UPDATE archive_segment_tables SET removed = removed + 1, removed_by = 'sqlite'
    WHERE table_name = 'events' AND segment_id = (SELECT c.segment_id FROM archive_coverage c
        WHERE c.record_type = OLD.record_type AND c.record_id = OLD.record_id
          AND OLD.sequence_num BETWEEN c.from_seq AND c.to_seq LIMIT 1);
END;

DROP TRIGGER IF EXISTS audit_immutable_delete;
CREATE TRIGGER audit_immutable_delete BEFORE DELETE ON event_audit_log
WHEN OLD.record_type IS NULL
  OR EXISTS (SELECT 1 FROM pending_events p WHERE p.record_type = OLD.record_type AND p.record_id = OLD.record_id)
  OR NOT EXISTS (SELECT 1 FROM archive_coverage c JOIN archive_segments s ON s.id = c.segment_id
                 JOIN archive_segment_tables t ON t.segment_id = c.segment_id AND t.table_name = 'event_audit_log'
                 WHERE c.record_type = OLD.record_type AND c.record_id = OLD.record_id
                   AND OLD.created_at < c.audit_before AND t.removed < t.row_count
                   AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = OLD.event_id AND e.sequence_num > c.to_seq))
BEGIN SELECT RAISE(ABORT, 'Event records are immutable and cannot be deleted.'); END;
CREATE TRIGGER audit_archive_removal AFTER DELETE ON event_audit_log
BEGIN
    UPDATE archive_segment_tables SET removed = removed + 1, removed_by = 'sqlite'
    WHERE table_name = 'event_audit_log' AND segment_id = (SELECT c.segment_id FROM archive_coverage c
        WHERE c.record_type = OLD.record_type AND c.record_id = OLD.record_id
          AND OLD.created_at < c.audit_before ORDER BY c.audit_before LIMIT 1);
END;

CREATE TRIGGER merged_events_archive_delete BEFORE DELETE ON merged_events
WHEN NOT EXISTS (SELECT 1 FROM archive_coverage c JOIN archive_segments s ON s.id = c.segment_id
                 WHERE c.record_type = OLD.record_type AND c.record_id = OLD.record_id
                   AND OLD.sequence_num BETWEEN c.from_seq AND c.to_seq)
BEGIN SELECT RAISE(ABORT, 'Merged events leave only with a verified archive segment.'); END;
CREATE TRIGGER merged_events_archive_removal AFTER DELETE ON merged_events
BEGIN
    UPDATE archive_segment_tables SET removed = removed + 1, removed_by = 'sqlite'
    WHERE table_name = 'merged_events' AND segment_id = (SELECT c.segment_id FROM archive_coverage c
        WHERE c.record_type = OLD.record_type AND c.record_id = OLD.record_id
          AND OLD.sequence_num BETWEEN c.from_seq AND c.to_seq LIMIT 1);
END;
