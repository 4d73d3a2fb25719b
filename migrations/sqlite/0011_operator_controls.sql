-- docs/spec.md §7.1 (issue 34): operator controls. See the MySQL migration
-- 0011 for what each column means.
ALTER TABLE dead_letters ADD COLUMN status TEXT NOT NULL DEFAULT 'parked';
ALTER TABLE dead_letters ADD COLUMN status_actor TEXT NULL;
ALTER TABLE dead_letters ADD COLUMN status_reason TEXT NULL;
ALTER TABLE dead_letters ADD COLUMN status_at TEXT NULL;
ALTER TABLE dead_letters ADD COLUMN sent_body BLOB NULL;
ALTER TABLE dead_letters ADD COLUMN answer TEXT NULL;
CREATE INDEX IF NOT EXISTS idx_dead_letters_status ON dead_letters (status, id);
UPDATE dead_letters SET status = 'replayed', status_at = replayed_at, status_actor = 'migration'
    WHERE replayed_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS delivery_failures (
    stage        TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    sent_body    BLOB NULL,
    answer       TEXT NULL,
    failed_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (stage, fingerprint)
);
CREATE INDEX IF NOT EXISTS idx_delivery_failures_at ON delivery_failures (failed_at);

CREATE TABLE IF NOT EXISTS target_controls (
    target      TEXT NOT NULL PRIMARY KEY,
    paused      INTEGER NOT NULL DEFAULT 0,
    actor       TEXT NULL,
    reason      TEXT NULL,
    changed_at  TEXT NULL
);
