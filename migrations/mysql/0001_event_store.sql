-- The V10 event store: one immutable row per raw event.
CREATE TABLE IF NOT EXISTS events (
    id                CHAR(36)     NOT NULL,
    record_type       VARCHAR(64)  NOT NULL,
    record_id         VARCHAR(191) NOT NULL,
    source            VARCHAR(16)  NOT NULL,
    `timestamp`       TIMESTAMP(6) NOT NULL,
    base_version      BIGINT       NOT NULL,
    changes           JSON         NOT NULL,
    full_snapshot_ref VARCHAR(1024) NULL,
    processed         TINYINT(1)   NOT NULL DEFAULT 0,
    sequence_num      BIGINT       NOT NULL,
    created_at        TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY idx_events_aggregate (record_type, record_id, sequence_num),
    KEY idx_events_unprocessed (processed, created_at),
    KEY idx_events_source_time (source, `timestamp`),
    CONSTRAINT chk_events_base_version CHECK (base_version >= 0)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Processing history. `claim` is 1 on the row that claims a fingerprint for a
-- stage and NULL otherwise: the unique key then makes the dedupe claim atomic
-- while any number of other rows (duplicates, failures) share the fingerprint.
CREATE TABLE IF NOT EXISTS event_audit_log (
    id                 BIGINT       NOT NULL AUTO_INCREMENT,
    event_id           CHAR(36)     NULL,
    fingerprint        CHAR(64)     NOT NULL,
    record_type        VARCHAR(64)  NULL,
    record_id          VARCHAR(191) NULL,
    stage              VARCHAR(32)  NOT NULL,
    processing_outcome VARCHAR(32)  NOT NULL,
    detail             JSON         NULL,
    message_id         VARCHAR(128) NULL,
    attempt            INT          NOT NULL DEFAULT 1,
    claim              TINYINT      NULL,
    created_at         TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_audit_claim (fingerprint, stage, claim),
    KEY idx_audit_fingerprint (fingerprint),
    KEY idx_audit_record (record_type, record_id, id),
    KEY idx_audit_event (event_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TRIGGER events_immutable_update BEFORE UPDATE ON events FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Event records are immutable and cannot be updated.';
CREATE TRIGGER events_immutable_delete BEFORE DELETE ON events FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Event records are immutable and cannot be deleted.';
CREATE TRIGGER audit_immutable_update BEFORE UPDATE ON event_audit_log FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Event records are immutable and cannot be updated.';
CREATE TRIGGER audit_immutable_delete BEFORE DELETE ON event_audit_log FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Event records are immutable and cannot be deleted.';

-- Mutable operational tables.

-- The merged state of each record (projection of `events`).
CREATE TABLE IF NOT EXISTS record_state (
    record_type  VARCHAR(64)  NOT NULL,
    record_id    VARCHAR(191) NOT NULL,
    version      BIGINT       NOT NULL,
    last_seq     BIGINT       NOT NULL,
    state        JSON         NOT NULL,
    updated_at   TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (record_type, record_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Merged events committed but not yet confirmed published.
CREATE TABLE IF NOT EXISTS outbox (
    event_id     CHAR(36)     NOT NULL,
    topic        VARCHAR(255) NOT NULL,
    ordering_key VARCHAR(300) NOT NULL,
    payload      LONGTEXT     NOT NULL,
    attributes   LONGTEXT     NOT NULL,
    created_at   TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (event_id),
    KEY idx_outbox_created (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Parked dead letters (SPEC §4 park/replay). `dlq_message_id` makes parking
-- idempotent on redelivery of the same dlq message.
CREATE TABLE IF NOT EXISTS dead_letters (
    id                  BIGINT       NOT NULL AUTO_INCREMENT,
    dlq_message_id      VARCHAR(128) NOT NULL,
    origin_message_id   VARCHAR(128) NULL,
    stage               VARCHAR(32)  NOT NULL,
    reason              VARCHAR(32)  NOT NULL,
    attempts            INT          NOT NULL DEFAULT 0,
    fingerprint         CHAR(64)     NULL,
    record_type         VARCHAR(64)  NULL,
    record_id           VARCHAR(191) NULL,
    last_error          TEXT         NULL,
    errors              LONGTEXT     NOT NULL,
    data                LONGBLOB     NOT NULL,
    attributes          LONGTEXT     NOT NULL,
    ordering_key        VARCHAR(300) NULL,
    source_subscription VARCHAR(255) NULL,
    delivery_count      INT          NULL,
    parked_at           TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    replay_count        INT          NOT NULL DEFAULT 0,
    replay_claimed_at   TIMESTAMP(6) NULL,
    replayed_at         TIMESTAMP(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_dead_letters_message (dlq_message_id),
    KEY idx_dead_letters_pending (replayed_at, id),
    KEY idx_dead_letters_record (record_type, record_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
