-- Grants for the daemon's runtime user and for the archiver (MySQL 8 / MariaDB).
-- Apply as an administrator after `event-backbone migrate` (MySQL refuses
-- grants on tables that do not exist yet), with each user's own password in
-- place of its placeholder (SYNC_WORKER_PASSWORD, EVENT_ARCHIVER_PASSWORD,
-- EVENT_ARCHIVE_RECORDER_PASSWORD):
--   sed -e "s/SYNC_WORKER_PASSWORD/$SYNC_WORKER_PASSWORD/" \
--       -e "s/EVENT_ARCHIVER_PASSWORD/$EVENT_ARCHIVER_PASSWORD/" \
--       -e "s/EVENT_ARCHIVE_RECORDER_PASSWORD/$EVENT_ARCHIVE_RECORDER_PASSWORD/" \
--       sql/grants-mysql.sql | mysql -u root -p
-- Another database name: also -e 's/event_backbone\./<db>./g'. The migration
-- user's grants are in docs/integration.md ("The migration user").

-- The runtime user, sync_worker (`run`, `doctor`, `dlq`, `events`, `mcp`).
-- The ledger (`events`, `event_audit_log`) is append-only for this user: the
-- database refuses UPDATE and DELETE even if the code tried.
CREATE USER IF NOT EXISTS 'sync_worker'@'%' IDENTIFIED BY 'SYNC_WORKER_PASSWORD';
GRANT SELECT, INSERT ON event_backbone.events TO 'sync_worker'@'%';
GRANT SELECT, INSERT ON event_backbone.event_audit_log TO 'sync_worker'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON event_backbone.record_state TO 'sync_worker'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON event_backbone.outbox TO 'sync_worker'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON event_backbone.dead_letters TO 'sync_worker'@'%';
GRANT SELECT ON event_backbone._sqlx_migrations TO 'sync_worker'@'%';
-- docs/spec.md §4.1 (migration 0003): pending events wait for their gap, merged
-- events are kept per version for convergent delivery (append-only for this
-- user), delivery progress per target and record.
GRANT SELECT, INSERT, UPDATE, DELETE ON event_backbone.pending_events TO 'sync_worker'@'%';
GRANT SELECT, INSERT ON event_backbone.merged_events TO 'sync_worker'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON event_backbone.delivery_state TO 'sync_worker'@'%';
-- docs/spec.md §6.1 (migration 0006): the runtime user reads archive checkpoints and
-- coverage (history answers from checkpoint + remaining events); it never
-- removes anything.
GRANT SELECT ON event_backbone.record_checkpoints TO 'sync_worker'@'%';
GRANT SELECT ON event_backbone.archive_segments TO 'sync_worker'@'%';
GRANT SELECT ON event_backbone.archive_coverage TO 'sync_worker'@'%';
-- docs/spec.md §4.3 (migration 0009): account-wide concurrency slots of a target,
-- taken and freed by every request while targets.<t>.account_concurrency is set.
GRANT SELECT, INSERT, UPDATE ON event_backbone.target_slots TO 'sync_worker'@'%';
-- docs/spec.md §7.1 (migration 0011): the last failed answer of a delivery
-- (copied onto its dead letter when parked, then removed) and the targets
-- paused by hand (`targets pause|resume`, read by every replica).
GRANT SELECT, INSERT, UPDATE, DELETE ON event_backbone.delivery_failures TO 'sync_worker'@'%';
GRANT SELECT, INSERT, UPDATE ON event_backbone.target_controls TO 'sync_worker'@'%';

-- The archive (`event-backbone archive`, the chart's CronJob) runs as two
-- users, so that no single credential can both vouch for a segment and
-- remove the rows it covers (issue 31):
--
-- event_archive_recorder reads what it archives and records a segment once
-- it has read it back from the bucket and verified it (the segment, its
-- coverage, row counts and dead letters, the records' checkpoints). It
-- removes nothing.
CREATE USER IF NOT EXISTS 'event_archive_recorder'@'%' IDENTIFIED BY 'EVENT_ARCHIVE_RECORDER_PASSWORD';
GRANT SELECT ON event_backbone.events TO 'event_archive_recorder'@'%';
GRANT SELECT ON event_backbone.event_audit_log TO 'event_archive_recorder'@'%';
GRANT SELECT ON event_backbone.merged_events TO 'event_archive_recorder'@'%';
GRANT SELECT ON event_backbone.dead_letters TO 'event_archive_recorder'@'%';
GRANT SELECT ON event_backbone.record_state TO 'event_archive_recorder'@'%';
GRANT SELECT ON event_backbone.pending_events TO 'event_archive_recorder'@'%';
GRANT SELECT ON event_backbone.outbox TO 'event_archive_recorder'@'%';
GRANT SELECT ON event_backbone.delivery_state TO 'event_archive_recorder'@'%';
GRANT SELECT ON event_backbone._sqlx_migrations TO 'event_archive_recorder'@'%';
GRANT SELECT, INSERT ON event_backbone.archive_segments TO 'event_archive_recorder'@'%';
GRANT SELECT, INSERT ON event_backbone.archive_coverage TO 'event_archive_recorder'@'%';
GRANT SELECT, INSERT ON event_backbone.archive_segment_tables TO 'event_archive_recorder'@'%';
GRANT SELECT, INSERT ON event_backbone.archive_dead_letters TO 'event_archive_recorder'@'%';
GRANT SELECT, INSERT, UPDATE ON event_backbone.record_checkpoints TO 'event_archive_recorder'@'%';

-- event_archiver removes the rows a recorded segment covers, which is all
-- the database lets it DELETE: migration 0006's triggers refuse any other
-- ledger row with the ledger's own message and count every removal against
-- the segment's manifest. It may not record a segment: it can only remove
-- what event_archive_recorder vouched for. INSERT on the ledger is for
-- `archive restore`; UPDATE on archive_segments only marks a segment
-- removed or restored. No DDL, no UPDATE on the ledger.
CREATE USER IF NOT EXISTS 'event_archiver'@'%' IDENTIFIED BY 'EVENT_ARCHIVER_PASSWORD';
GRANT SELECT, INSERT, DELETE ON event_backbone.events TO 'event_archiver'@'%';
GRANT SELECT, INSERT, DELETE ON event_backbone.event_audit_log TO 'event_archiver'@'%';
GRANT SELECT, INSERT, DELETE ON event_backbone.merged_events TO 'event_archiver'@'%';
GRANT SELECT, INSERT, DELETE ON event_backbone.dead_letters TO 'event_archiver'@'%';
GRANT SELECT ON event_backbone.record_state TO 'event_archiver'@'%';
GRANT SELECT ON event_backbone.pending_events TO 'event_archiver'@'%';
GRANT SELECT ON event_backbone.outbox TO 'event_archiver'@'%';
GRANT SELECT ON event_backbone.delivery_state TO 'event_archiver'@'%';
GRANT SELECT ON event_backbone._sqlx_migrations TO 'event_archiver'@'%';
GRANT SELECT, UPDATE (removed_at, restored_at) ON event_backbone.archive_segments TO 'event_archiver'@'%';
GRANT SELECT ON event_backbone.archive_coverage TO 'event_archiver'@'%';
GRANT SELECT ON event_backbone.archive_segment_tables TO 'event_archiver'@'%';
GRANT SELECT ON event_backbone.archive_dead_letters TO 'event_archiver'@'%';
GRANT SELECT ON event_backbone.record_checkpoints TO 'event_archiver'@'%';

-- Upgrading from a release where event_archiver also recorded segments
-- (INSERT on the archive tables): GRANT only adds, so take those away once,
-- by hand (docs/operations.md, "Upgrading the archive's grants"):
--   REVOKE INSERT ON event_backbone.archive_segments FROM 'event_archiver'@'%';
--   REVOKE INSERT ON event_backbone.archive_coverage FROM 'event_archiver'@'%';
--   REVOKE INSERT ON event_backbone.archive_segment_tables FROM 'event_archiver'@'%';
--   REVOKE INSERT ON event_backbone.archive_dead_letters FROM 'event_archiver'@'%';
--   REVOKE UPDATE ON event_backbone.archive_segments FROM 'event_archiver'@'%';
--   REVOKE INSERT, UPDATE ON event_backbone.record_checkpoints FROM 'event_archiver'@'%';
