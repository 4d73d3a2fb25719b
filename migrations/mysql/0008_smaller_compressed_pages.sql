-- SPEC §6.1: ≤ 1,000 bytes per event. With 8 KiB compressed pages (0007)
-- and merged events stored as what nothing else holds, `bench storage`
-- still measured ~1,160 bytes per event: most of a page's compressed
-- image is hex that zlib halves, and an 8 KiB page holding 5–6 KiB of it
-- wastes the rest. 4 KiB pages on disk (16 KiB in memory) fit it closer:
-- 935 bytes per event at steady state (100,000 events), at the price of more recompressions on insert
-- (docs/capacity.md, "Bytes per event": the merge stage's figures with
-- both). An operator who would rather pay bytes than CPU can go back with
-- `ALTER TABLE … KEY_BLOCK_SIZE=8` (nothing depends on the page size).
-- Every ALTER rebuilds its table online (LOCK=NONE: writers go on; it is
-- refused rather than block them).
ALTER TABLE event_audit_log ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=4, ALGORITHM=INPLACE, LOCK=NONE;
ALTER TABLE events ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=4, ALGORITHM=INPLACE, LOCK=NONE;
ALTER TABLE merged_events ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=4, ALGORITHM=INPLACE, LOCK=NONE;
