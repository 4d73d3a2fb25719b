-- SPEC §4.1: ordering under faults (see the MySQL migration for the why).
CREATE TABLE IF NOT EXISTS pending_events (
    fingerprint     TEXT    NOT NULL PRIMARY KEY,
    event_id        TEXT    NOT NULL,
    record_type     TEXT    NOT NULL,
    record_id       TEXT    NOT NULL,
    base_version    INTEGER NOT NULL,
    event           TEXT    NOT NULL,
    message_id      TEXT    NULL,
    data            BLOB    NOT NULL,
    attributes      TEXT    NOT NULL,
    received_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    gap_reported_at TEXT    NULL
);
CREATE INDEX IF NOT EXISTS idx_pending_record ON pending_events (record_type, record_id, base_version);
CREATE INDEX IF NOT EXISTS idx_pending_received ON pending_events (gap_reported_at, received_at);

ALTER TABLE record_state ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS merged_events (
    record_type  TEXT    NOT NULL,
    record_id    TEXT    NOT NULL,
    sequence_num INTEGER NOT NULL,
    version      INTEGER NOT NULL,
    event_id     TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (record_type, record_id, sequence_num)
);

CREATE TABLE IF NOT EXISTS delivery_state (
    target        TEXT    NOT NULL,
    record_type   TEXT    NOT NULL,
    record_id     TEXT    NOT NULL,
    acked_seq     INTEGER NOT NULL DEFAULT 0,
    acked_version INTEGER NOT NULL DEFAULT 0,
    attempted_seq INTEGER NOT NULL DEFAULT 0,
    updated_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (target, record_type, record_id)
);

ALTER TABLE outbox ADD COLUMN sequence_num INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS idx_outbox_key ON outbox (ordering_key, sequence_num);
