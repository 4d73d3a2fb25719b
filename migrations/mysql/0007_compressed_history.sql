-- SPEC §6.1: ≤ 1,000 bytes per event. What is left after 0005 and the skip
-- rows (docs/capacity.md, "Bytes per event") is mostly hex: SHA-256
-- fingerprints (CHAR(64)) and UUIDs (CHAR(36)) in every row and index of
-- the three history tables, which are written once and read by key. InnoDB
-- page compression (zlib, 8 KiB pages on disk for 16 KiB in memory) stores
-- them in about half. Both MySQL 8 and MariaDB ≥ 10.6.6 accept it; it needs
-- innodb_file_per_table (the default; Cloud SQL's too).
-- Each ALTER rebuilds its table online (LOCK=NONE: writers go on; it is
-- refused rather than block them).
ALTER TABLE event_audit_log ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8, ALGORITHM=INPLACE, LOCK=NONE;
ALTER TABLE events ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8, ALGORITHM=INPLACE, LOCK=NONE;
ALTER TABLE merged_events ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8, ALGORITHM=INPLACE, LOCK=NONE;
