-- SPEC §4.1: ordering under faults.

-- Raw events whose base_version is ahead of their record: stored durably and
-- merged in version order once the record reaches their base. The row is
-- deleted in the transaction that merges it (the `events` row is written then).
-- `event` holds the validated event (resolved changes) as JSON; `data` and
-- `attributes` the message as received, for its gap dead letter.
CREATE TABLE IF NOT EXISTS pending_events (
    fingerprint       CHAR(64)     NOT NULL,
    event_id          CHAR(36)     NOT NULL,
    record_type       VARCHAR(64)  NOT NULL,
    record_id         VARCHAR(191) NOT NULL,
    base_version      BIGINT       NOT NULL,
    event             LONGTEXT     NOT NULL,
    message_id        VARCHAR(128) NULL,
    data              LONGBLOB     NOT NULL,
    attributes        LONGTEXT     NOT NULL,
    received_at       TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    gap_reported_at   TIMESTAMP(6) NULL,
    PRIMARY KEY (fingerprint),
    KEY idx_pending_record (record_type, record_id, base_version),
    KEY idx_pending_received (gap_reported_at, received_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- How many pending events a record has: the merge path only looks for
-- pending events of records that have some.
ALTER TABLE record_state ADD COLUMN pending BIGINT NOT NULL DEFAULT 0;

-- Every merged event, by record and position: a delivery folds in the
-- ones its target has not acknowledged yet. The position is the
-- sequence_num of the event that produced it: unique and ordered like the
-- versions (a conflict-only merged event keeps its record's version, so the
-- version alone can repeat). Append-only.
CREATE TABLE IF NOT EXISTS merged_events (
    record_type  VARCHAR(64)  NOT NULL,
    record_id    VARCHAR(191) NOT NULL,
    sequence_num BIGINT       NOT NULL,
    version      BIGINT       NOT NULL,
    event_id     CHAR(36)     NOT NULL,
    payload      LONGTEXT     NOT NULL,
    created_at   TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (record_type, record_id, sequence_num)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Per target and record: the last merged event the target acknowledged
-- (2xx) and the last one a request was started for, by position.
CREATE TABLE IF NOT EXISTS delivery_state (
    target        VARCHAR(16)  NOT NULL,
    record_type   VARCHAR(64)  NOT NULL,
    record_id     VARCHAR(191) NOT NULL,
    acked_seq     BIGINT       NOT NULL DEFAULT 0,
    acked_version BIGINT       NOT NULL DEFAULT 0,
    attempted_seq BIGINT       NOT NULL DEFAULT 0,
    updated_at    TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (target, record_type, record_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The outbox knows each row's position, so a record's unpublished merged
-- events are published in order before a later one.
ALTER TABLE outbox ADD COLUMN sequence_num BIGINT NOT NULL DEFAULT 0;
CREATE INDEX idx_outbox_key ON outbox (ordering_key, sequence_num);
