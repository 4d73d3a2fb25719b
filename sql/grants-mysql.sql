-- Grants for the daemon's runtime user and for the archiver (MySQL 8 / MariaDB).
-- Apply as an administrator after `event-backbone migrate` (MySQL refuses
-- grants on tables that do not exist yet), with each user's own password in
-- place of its placeholder (SYNC_WORKER_PASSWORD, EVENT_ARCHIVER_PASSWORD):
--   sed -e "s/SYNC_WORKER_PASSWORD/$SYNC_WORKER_PASSWORD/" \
--       -e "s/EVENT_ARCHIVER_PASSWORD/$EVENT_ARCHIVER_PASSWORD/" \
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
-- SPEC §4.1 (migration 0003): pending events wait for their gap, merged
-- events are kept per version for convergent delivery (append-only for this
-- user), delivery progress per target and record.
GRANT SELECT, INSERT, UPDATE, DELETE ON event_backbone.pending_events TO 'sync_worker'@'%';
GRANT SELECT, INSERT ON event_backbone.merged_events TO 'sync_worker'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON event_backbone.delivery_state TO 'sync_worker'@'%';
-- SPEC §6.1 (migration 0006): the runtime user reads archive checkpoints and
-- coverage (history answers from checkpoint + remaining events); it never
-- removes anything.
GRANT SELECT ON event_backbone.record_checkpoints TO 'sync_worker'@'%';
GRANT SELECT ON event_backbone.archive_segments TO 'sync_worker'@'%';
GRANT SELECT ON event_backbone.archive_coverage TO 'sync_worker'@'%';
-- SPEC §4.3 (migration 0009): account-wide concurrency slots of a target,
-- taken and freed by every request while targets.<t>.account_concurrency is set.
GRANT SELECT, INSERT, UPDATE ON event_backbone.target_slots TO 'sync_worker'@'%';

-- The archiver (`event-backbone archive`, the chart's CronJob): a separate
-- user that may DELETE ledger rows, which the database allows only for rows
-- a recorded, verified archive segment covers (migration 0006's triggers
-- refuse the rest with the ledger's own message, and count every removal
-- against the segment's manifest). INSERT on the ledger is for
-- `archive restore`. No DDL, no UPDATE on the ledger.
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
GRANT SELECT, INSERT, UPDATE ON event_backbone.archive_segments TO 'event_archiver'@'%';
GRANT SELECT, INSERT ON event_backbone.archive_coverage TO 'event_archiver'@'%';
GRANT SELECT, INSERT ON event_backbone.archive_segment_tables TO 'event_archiver'@'%';
GRANT SELECT, INSERT ON event_backbone.archive_dead_letters TO 'event_archiver'@'%';
GRANT SELECT, INSERT, UPDATE ON event_backbone.record_checkpoints TO 'event_archiver'@'%';
