-- SPEC §6.1: retention with archival. Rows leave the database only as an
-- archive segment verified in the snapshot bucket covers them, and only
-- through the archiver role (sql/grants-mysql.sql); the database checks it.

-- One verified segment: a compressed, content-addressed object (`id` is
-- the SHA-256 of its bytes) and its manifest. A row is written only after
-- the object was read back and checked; `removed_at` once every row it
-- covers has left the database, `restored_at` when they were brought back.
CREATE TABLE IF NOT EXISTS archive_segments (
    id           CHAR(64)      NOT NULL,
    reference    VARCHAR(1024) NOT NULL,
    bytes        BIGINT        NOT NULL,
    cutoff       TIMESTAMP(6)  NOT NULL,
    manifest     LONGTEXT      NOT NULL,
    verified_at  TIMESTAMP(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    removed_at   TIMESTAMP(6)  NULL,
    restored_at  TIMESTAMP(6)  NULL,
    PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- What a segment covers, per record: its events and merged events with
-- from_seq <= sequence_num <= to_seq, and its audit rows created before
-- `audit_before` that are not about a later event still stored.
CREATE TABLE IF NOT EXISTS archive_coverage (
    record_type  VARCHAR(64)  NOT NULL,
    record_id    VARCHAR(191) NOT NULL,
    segment_id   CHAR(64)     NOT NULL,
    from_seq     BIGINT       NOT NULL,
    to_seq       BIGINT       NOT NULL,
    audit_before TIMESTAMP(6) NOT NULL,
    PRIMARY KEY (record_type, record_id, segment_id),
    -- Two runs at once cannot both cover a record from the same sequence:
    -- nothing is archived twice.
    UNIQUE KEY uq_archive_coverage_from (record_type, record_id, from_seq),
    KEY idx_archive_coverage_segment (segment_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Rows per table a segment holds, and how many of them were removed: every
-- removal is counted here by the triggers below, and one past the manifest
-- is refused.
CREATE TABLE IF NOT EXISTS archive_segment_tables (
    segment_id  CHAR(64)    NOT NULL,
    table_name  VARCHAR(32) NOT NULL,
    row_count   BIGINT      NOT NULL,
    removed     BIGINT      NOT NULL DEFAULT 0,
    removed_by  VARCHAR(300) NULL,
    PRIMARY KEY (segment_id, table_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Replayed dead letters a segment holds, by id (dead_letters is not
-- immutable; the ids say exactly which rows the segment took).
CREATE TABLE IF NOT EXISTS archive_dead_letters (
    segment_id     CHAR(64) NOT NULL,
    dead_letter_id BIGINT   NOT NULL,
    PRIMARY KEY (segment_id, dead_letter_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Per record, its merged state (version, values, per-field provenance) after
-- the last archived event: history, replay, verify and explain go on from it.
CREATE TABLE IF NOT EXISTS record_checkpoints (
    record_type  VARCHAR(64)  NOT NULL,
    record_id    VARCHAR(191) NOT NULL,
    sequence_num BIGINT       NOT NULL,
    version      BIGINT       NOT NULL,
    state        JSON         NOT NULL,
    segment_id   CHAR(64)     NOT NULL,
    created_at   TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (record_type, record_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- A DELETE on the ledger is refused (with the SPEC's message) unless a
-- verified segment covers the row; an allowed one is counted against the
-- segment's manifest. Triggers run with their definer's rights, so the
-- archiver needs no rights on the counting table.
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
    UPDATE archive_segment_tables SET removed = removed + 1, removed_by = CURRENT_USER()
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
    UPDATE archive_segment_tables SET removed = removed + 1, removed_by = CURRENT_USER()
        WHERE segment_id = seg AND table_name = 'event_audit_log';
    IF (SELECT removed > row_count FROM archive_segment_tables
        WHERE segment_id = seg AND table_name = 'event_audit_log') IS NOT FALSE THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Event records are immutable and cannot be deleted.';
    END IF;
END;

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
    UPDATE archive_segment_tables SET removed = removed + 1, removed_by = CURRENT_USER()
        WHERE segment_id = seg AND table_name = 'merged_events';
END;
