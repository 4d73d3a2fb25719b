-- SPEC §4.3: a target's account-wide concurrency cap
-- (`targets.<t>.account_concurrency`), shared by every replica using this
-- database. One row per slot; a request takes a free (or expired) slot
-- before it goes and frees it when the answer came. `until_ms` (Unix
-- milliseconds, the holder's clock) lets a slot of a replica that died
-- go back to the pool. The rows are made by the daemon for the configured
-- cap (INSERT OR IGNORE), so changing the cap needs no migration.
CREATE TABLE target_slots (
    target TEXT NOT NULL,
    slot INTEGER NOT NULL,
    claim INTEGER NULL,
    holder INTEGER NULL,
    until_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (target, slot)
);
