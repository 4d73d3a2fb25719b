-- docs/spec.md §6.1 and the merge drain (issue 32): the history tables go
-- back to 8 KiB compressed pages (0008 took them to 4 KiB).
--
-- 0008 bought bytes with CPU when a delivery still left an audit row per
-- message (3.19 audit rows per event: 8 KiB pages measured ~1,160 bytes per
-- event, over the budget). Deliveries now write one row per request and
-- none for a covered message (1.18 rows per event), and at 8 KiB `bench
-- storage` measures 852-867 bytes per event (100,000 events, MariaDB),
-- inside the budget. What 4 KiB pages cost meanwhile: about half of MariaDB's CPU
-- in the merge drain was zlib recompressing pages (perf: 49 % in libz), a
-- merge batch took ~1 ms per event against ~0.7 ms with 8 KiB, and the
-- drain ran at 0.61-0.95x the broker's ack-only rate (0.90-1.00x with 8 KiB).
-- docs/capacity.md §e, "Migration 0012", has the figures. Every ALTER rebuilds
-- its table online (LOCK=NONE: writers go on; it is refused rather than
-- block them); an operator who would rather pay CPU than bytes can go back
-- with `ALTER TABLE ... KEY_BLOCK_SIZE=4` (nothing depends on the page size).
ALTER TABLE event_audit_log ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8, ALGORITHM=INPLACE, LOCK=NONE;
ALTER TABLE events ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8, ALGORITHM=INPLACE, LOCK=NONE;
ALTER TABLE merged_events ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8, ALGORITHM=INPLACE, LOCK=NONE;
