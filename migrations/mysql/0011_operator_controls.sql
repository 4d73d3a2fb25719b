-- docs/spec.md §7.1 (issue 34): operator controls.
--
-- A dead letter's status and who changed it last, why and when: `parked`
-- (open), `replayed`, `superseded` (a later version reached the target:
-- closed by itself, actor `auto`) or `discarded` (closed by an operator
-- with a reason). Every change is also an audit row (stage `operator`).
-- `replayed_at` / `replay_count` keep their meaning.
--
-- A delivery dead letter also keeps the request body the daemon sent (the
-- fold, capped at 64 KiB) and the target's answer (JSON: HTTP status,
-- body capped at 4 KiB, NetSuite error code).
ALTER TABLE dead_letters
    ADD COLUMN status VARCHAR(16) NOT NULL DEFAULT 'parked',
    ADD COLUMN status_actor VARCHAR(128) NULL,
    ADD COLUMN status_reason TEXT NULL,
    ADD COLUMN status_at TIMESTAMP(6) NULL,
    ADD COLUMN sent_body MEDIUMBLOB NULL,
    ADD COLUMN answer TEXT NULL,
    ADD KEY idx_dead_letters_status (status, id);
UPDATE dead_letters SET status = 'replayed', status_at = replayed_at, status_actor = 'migration'
    WHERE replayed_at IS NOT NULL;

-- The last failed answer of a delivery, per (stage, fingerprint), written
-- when the attempt failed: the park stage copies it onto the dead letter
-- (Pub/Sub attributes are too small to carry a body).
CREATE TABLE IF NOT EXISTS delivery_failures (
    stage        VARCHAR(32)  NOT NULL,
    fingerprint  CHAR(64)     NOT NULL,
    sent_body    MEDIUMBLOB   NULL,
    answer       TEXT         NULL,
    failed_at    TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (stage, fingerprint),
    KEY idx_delivery_failures_at (failed_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- A target paused by hand: every replica reads this table every few
-- seconds and holds the target's deliveries (circuit cause `paused`); a
-- restart keeps it. One row per target ever paused; `paused` 0 once resumed.
CREATE TABLE IF NOT EXISTS target_controls (
    target      VARCHAR(32)  NOT NULL,
    paused      INT          NOT NULL DEFAULT 0,
    actor       VARCHAR(128) NULL,
    reason      TEXT         NULL,
    changed_at  TIMESTAMP(6) NULL,
    PRIMARY KEY (target)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
