-- The V10 event store: one immutable row per raw event. Timestamps are
-- stored as RFC 3339 text with exactly six fractional digits, so they sort
-- correctly and keep microseconds.
CREATE TABLE IF NOT EXISTS events (
    id                TEXT    NOT NULL PRIMARY KEY,
    record_type       TEXT    NOT NULL,
    record_id         TEXT    NOT NULL,
    source            TEXT    NOT NULL,
    "timestamp"       TEXT    NOT NULL,
    base_version      INTEGER NOT NULL CHECK (base_version >= 0),
    changes           TEXT    NOT NULL CHECK (json_valid(changes)),
    full_snapshot_ref TEXT    NULL,
    processed         INTEGER NOT NULL DEFAULT 0,
    sequence_num      INTEGER NOT NULL,
    created_at        TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_events_aggregate ON events (record_type, record_id, sequence_num);
CREATE INDEX IF NOT EXISTS idx_events_unprocessed ON events (processed, created_at);
CREATE INDEX IF NOT EXISTS idx_events_source_time ON events (source, "timestamp");

-- See the MySQL migration for why `claim` exists.
CREATE TABLE IF NOT EXISTS event_audit_log (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id           TEXT    NULL,
    fingerprint        TEXT    NOT NULL CHECK (length(fingerprint) = 64),
    record_type        TEXT    NULL,
    record_id          TEXT    NULL,
    stage              TEXT    NOT NULL,
    processing_outcome TEXT    NOT NULL,
    detail             TEXT    NULL CHECK (detail IS NULL OR json_valid(detail)),
    message_id         TEXT    NULL,
    attempt            INTEGER NOT NULL DEFAULT 1,
    claim              INTEGER NULL,
    created_at         TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_audit_claim ON event_audit_log (fingerprint, stage, claim);
CREATE INDEX IF NOT EXISTS idx_audit_fingerprint ON event_audit_log (fingerprint);
CREATE INDEX IF NOT EXISTS idx_audit_record ON event_audit_log (record_type, record_id, id);
CREATE INDEX IF NOT EXISTS idx_audit_event ON event_audit_log (event_id);

CREATE TRIGGER IF NOT EXISTS events_immutable_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'Event records are immutable and cannot be updated.'); END;
CREATE TRIGGER IF NOT EXISTS events_immutable_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'Event records are immutable and cannot be deleted.'); END;
CREATE TRIGGER IF NOT EXISTS audit_immutable_update BEFORE UPDATE ON event_audit_log
BEGIN SELECT RAISE(ABORT, 'Event records are immutable and cannot be updated.'); END;
CREATE TRIGGER IF NOT EXISTS audit_immutable_delete BEFORE DELETE ON event_audit_log
BEGIN SELECT RAISE(ABORT, 'Event records are immutable and cannot be deleted.'); END;

CREATE TABLE IF NOT EXISTS record_state (
    record_type TEXT    NOT NULL,
    record_id   TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    state       TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (record_type, record_id)
);

CREATE TABLE IF NOT EXISTS outbox (
    event_id     TEXT NOT NULL PRIMARY KEY,
    topic        TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    payload      TEXT NOT NULL,
    attributes   TEXT NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS idx_outbox_created ON outbox (created_at);

CREATE TABLE IF NOT EXISTS dead_letters (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    dlq_message_id      TEXT    NOT NULL UNIQUE,
    origin_message_id   TEXT    NULL,
    stage               TEXT    NOT NULL,
    reason              TEXT    NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    fingerprint         TEXT    NULL,
    record_type         TEXT    NULL,
    record_id           TEXT    NULL,
    last_error          TEXT    NULL,
    errors              TEXT    NOT NULL,
    data                BLOB    NOT NULL,
    attributes          TEXT    NOT NULL,
    ordering_key        TEXT    NULL,
    source_subscription TEXT    NULL,
    delivery_count      INTEGER NULL,
    parked_at           TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    replay_count        INTEGER NOT NULL DEFAULT 0,
    replay_claimed_at   TEXT    NULL,
    replayed_at         TEXT    NULL
);
CREATE INDEX IF NOT EXISTS idx_dead_letters_pending ON dead_letters (replayed_at, id);
CREATE INDEX IF NOT EXISTS idx_dead_letters_record ON dead_letters (record_type, record_id);
